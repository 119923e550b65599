"""The tools offered to the model: their definitions for both OpenAI APIs, and safe execution.

`ToolRegistry.call` is the only way the assistant layer runs a tool. It never raises (except
`asyncio.CancelledError`): every failure becomes `{"error": "<safe text>"}` for the model and
`ok=False` on the `ToolResult`, so a failing tool never ends the run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
from pydantic import BaseModel, ValidationError

from service.redaction import Redactor, redact_http_logs
from service.tools.kmc_clients import ACTIVE_CLIENTS_TOOL
from service.tools.kmc_offices import AVAILABLE_OFFICES_TOOL
from service.tools.tool import JSONObject, Tool, ToolConfig, ToolContext, ToolError
from service.tools.weather import WEATHER_TOOL

logger = logging.getLogger(__name__)

ALL_TOOLS: tuple[Tool[Any], ...] = (WEATHER_TOOL, ACTIVE_CLIENTS_TOOL, AVAILABLE_OFFICES_TOOL)
"""Every tool the service knows, in the order they are offered."""

MAX_ARGUMENTS_CHARS = 20_000
"""Longer argument strings are refused without being parsed."""

_MAX_ERROR_CHARS = 500
_MAX_VALIDATION_ISSUES = 5

ToolCall = tuple[str, str, str]
"""`(call_id, name, arguments)` as the model sent them; `arguments` is a JSON text."""


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one tool call, ready to hand back to the model."""

    call_id: str
    name: str
    output: str
    """The JSON text handed to the model, at most `ToolConfig.max_output_chars` long."""
    ok: bool
    duration_ms: int
    error: str | None = None
    """Safe text (no keys, no URLs with queries) when `ok` is False; also in `output`."""


class ToolRegistry:
    """The tools offered to the model for one process, bound to a shared HTTP client."""

    def __init__(self, tools: Sequence[Tool[Any]], context: ToolContext) -> None:
        self._context = context
        self._tools: dict[str, Tool[Any]] = {}
        self._schemas: dict[str, JSONObject] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name: {tool.name}")
            if tool.args_model.model_config.get("extra") != "forbid":
                raise ValueError(f"argument model of {tool.name} must set extra='forbid'")
            self._tools[tool.name] = tool
            self._schemas[tool.name] = parameters_schema(tool.args_model)

    @classmethod
    def from_config(
        cls,
        config: ToolConfig,
        http: httpx2.AsyncClient,
        *,
        tools: Sequence[Tool[Any]] = ALL_TOOLS,
    ) -> ToolRegistry:
        """Offer every tool that is configured (and enabled, when `config.enabled` is set).

        An unknown name in `config.enabled` raises `ValueError`: a typo is a start-up error.
        Also makes httpx2's request log line omit query strings (see `redact_http_logs`).
        """
        known = [tool.name for tool in tools]
        if config.enabled is not None:
            unknown = sorted(set(config.enabled) - set(known))
            if unknown:
                raise ValueError(
                    f"unknown tool(s) enabled: {', '.join(unknown)}; known: {', '.join(known)}"
                )
        offered: list[Tool[Any]] = []
        for tool in tools:
            if config.enabled is not None and tool.name not in config.enabled:
                continue
            if not tool.is_configured(config):
                logger.info("tool %s is not offered: its API is not configured", tool.name)
                continue
            offered.append(tool)
        redact_http_logs()
        registry = cls(offered, ToolContext(http=http, config=config))
        logger.info("tools offered to the model: %s", ", ".join(registry.names) or "none")
        return registry

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the offered tools, in order."""
        return tuple(self._tools)

    def responses_definitions(self) -> list[JSONObject]:
        """Function tool definitions for the Responses API (`tools=` of `responses.create`)."""
        return [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": copy.deepcopy(self._schemas[tool.name]),
                "strict": False,
            }
            for tool in self._tools.values()
        ]

    def assistants_definitions(self) -> list[JSONObject]:
        """Function tool definitions for the (legacy) Assistants API."""
        return [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": copy.deepcopy(self._schemas[tool.name]),
                },
            }
            for tool in self._tools.values()
        ]

    async def call(self, call_id: str, name: str, arguments: str) -> ToolResult:
        """Run one tool call. Never raises, except `asyncio.CancelledError`."""
        started = time.perf_counter()
        try:
            output = await self._run(name, arguments)
            error = None
        except ToolError as exc:
            error = Redactor(self._context.config.secrets)(exc.message)[:_MAX_ERROR_CHARS]
            output = _dumps({"error": error})
        except Exception as exc:  # pragma: no cover - _run converts failures; belt and braces
            error = f"tool call failed ({type(exc).__name__})"
            output = _dumps({"error": error})
        duration_ms = int((time.perf_counter() - started) * 1000)
        shown_name = name if name in self._tools else repr(name[:64])
        if error is None:
            logger.info("tool %s (call %s) succeeded in %d ms", shown_name, call_id, duration_ms)
        else:
            logger.warning(
                "tool %s (call %s) failed in %d ms: %s", shown_name, call_id, duration_ms, error
            )
        return ToolResult(
            call_id=call_id,
            name=name,
            output=output,
            ok=error is None,
            duration_ms=duration_ms,
            error=error,
        )

    async def call_many(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """Run several tool calls concurrently; results come back in the order of `calls`."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.call(*call)) for call in calls]
        return [task.result() for task in tasks]

    async def _run(self, name: str, arguments: str) -> str:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(
                f"unknown tool {name[:64]!r}; available tools: {', '.join(self.names) or 'none'}"
            )
        args = parse_arguments(tool.args_model, arguments)
        config = self._context.config
        try:
            async with asyncio.timeout(config.timeout):
                result = await tool.func(args, self._context)
        except TimeoutError:
            raise ToolError(f"{tool.name} timed out after {config.timeout:g} s") from None
        except ToolError:
            raise
        except Exception as exc:
            # A bug, not an upstream failure. Log the stack without the exception message,
            # which could quote a URL or a header; the model only learns the class name.
            logger.error(
                "tool %s raised %s; stack:\n%s",
                tool.name,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            raise ToolError(f"{tool.name} failed unexpectedly ({type(exc).__name__})") from None
        try:
            text = fit_output(Redactor(config.secrets).value(result), config.max_output_chars)
        except (TypeError, ValueError):
            raise ToolError(f"{tool.name} produced a result that is not JSON") from None
        if text is None:
            raise ToolError("tool output too large")
        return text


def parse_arguments(model: type[BaseModel], arguments: str) -> BaseModel:
    """Decode and validate the model's argument JSON; `ToolError` says what to fix."""
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        raise ToolError(f"arguments are longer than {MAX_ARGUMENTS_CHARS} characters")
    try:
        # Some models send "" for a function without parameters.
        data = json.loads(arguments.strip() or "{}")
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise ToolError("arguments must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ToolError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """`invalid arguments: city: ...; capacity: ...` without pydantic's URLs or echoed input."""
    issues = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = []
    for issue in issues[:_MAX_VALIDATION_ISSUES]:
        where = ".".join(str(part) for part in issue["loc"]) or "arguments"
        parts.append(f"{where}: {issue['msg'].removeprefix('Value error, ')}")
    if len(issues) > _MAX_VALIDATION_ISSUES:
        parts.append(f"and {len(issues) - _MAX_VALIDATION_ISSUES} more")
    return "invalid arguments: " + "; ".join(parts)


def parameters_schema(model: type[BaseModel]) -> JSONObject:
    """The JSON schema of an argument model, as OpenAI function `parameters`.

    Generated by pydantic, so constraints (`pattern`, `minimum`, `maxLength`, ...) follow the
    model; titles are dropped as noise, and `required` / `additionalProperties` are explicit.
    """
    schema: JSONObject = _without_titles(model.model_json_schema())
    schema.pop("description", None)  # the model docstring; the tool has its own description
    schema["type"] = "object"
    schema.setdefault("properties", {})
    schema["required"] = list(schema.get("required", []))
    schema["additionalProperties"] = False
    return schema


_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_SCHEMA_VALUES = frozenset({"default", "examples", "const", "enum"})


def _without_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    cleaned: JSONObject = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            # Keys here are property names ("title" could be one), values are schemas.
            cleaned[key] = {name: _without_titles(sub) for name, sub in value.items()}
        elif key in _SCHEMA_VALUES:
            cleaned[key] = value
        else:
            cleaned[key] = _without_titles(value)
    return cleaned


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def fit_output(result: JSONObject, limit: int) -> str | None:
    """`result` as JSON text of at most `limit` characters, or None when it cannot fit.

    An oversized result keeps fewer entries of its top-level lists (the longest list is cut
    first) and gets `"truncated": true`, so it stays valid JSON and counts such as
    `total_available_spaces` still tell the model how many there were.
    """
    text = _dumps(result)
    if len(text) <= limit:
        return text
    trimmed = {**result, "truncated": True}
    lists = [key for key, value in result.items() if isinstance(value, list) and value]
    for key in sorted(lists, key=lambda k: len(_dumps(result[k])), reverse=True):
        items: list[Any] = result[key]
        trimmed[key] = []
        if len(_dumps(trimmed)) > limit:
            continue  # even empty it does not fit; cut the next list too
        keep_min, keep_max = 0, len(items)
        while keep_min < keep_max:
            middle = (keep_min + keep_max + 1) // 2
            trimmed[key] = items[:middle]
            if len(_dumps(trimmed)) <= limit:
                keep_min = middle
            else:
                keep_max = middle - 1
        trimmed[key] = items[:keep_min]
        return _dumps(trimmed)
    text = _dumps(trimmed)
    return text if len(text) <= limit else None
