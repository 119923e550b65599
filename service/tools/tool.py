"""What a tool is: a plain async function, its Pydantic argument model, and its configuration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

import httpx2
from pydantic import BaseModel, ConfigDict

JSONObject = dict[str, Any]
"""What a tool function returns: a JSON-serialisable object."""

ArgsT = TypeVar("ArgsT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """Settings the tools need, passed in by the application (the tools never read settings).

    Blank strings count as unset, so `OPENWEATHER_API_KEY=` in a `.env` file turns the
    weather tool off instead of offering a tool that can only fail.
    """

    openweather_api_key: str | None = None
    openweather_base_url: str = "https://api.openweathermap.org"
    kmc_api_url: str | None = None
    kmc_api_key: str | None = None
    timeout: float = 15.0
    """Seconds one tool call may take, all of its HTTP requests included."""
    max_output_chars: int = 16_000
    """Upper bound on the JSON text handed to the model for one call."""
    enabled: tuple[str, ...] | None = None
    """Names of the tools to offer; None offers every configured tool."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                stripped = value.strip()
                if f.name.endswith(("_key", "_url")) and not stripped:
                    object.__setattr__(self, f.name, None)
                else:
                    object.__setattr__(self, f.name, stripped)
        if not self.openweather_base_url:
            raise ValueError("openweather_base_url must not be empty")
        if self.timeout <= 0:
            raise ValueError(f"tool timeout must be positive, got {self.timeout!r}")
        if self.max_output_chars < 256:
            raise ValueError(f"max_output_chars must be at least 256, got {self.max_output_chars}")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Keys to scrub from tool output in case an upstream echoes one back.

        Keys shorter than 8 characters are left out: replacing "k" everywhere would mangle the
        output, and no real key is that short.
        """
        keys = (self.openweather_api_key, self.kmc_api_key)
        return tuple(key for key in keys if key is not None and len(key) >= 8)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool function receives besides its arguments."""

    http: httpx2.AsyncClient
    config: ToolConfig


class ToolError(Exception):
    """An expected tool failure; its message is safe to show to the model as is.

    Tools raise it for outcomes such as "city not found"; the registry turns it into
    `{"error": message}`. Never put a key, a header or a URL with its query in the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoArgs(BaseModel):
    """Argument model of a tool that takes no arguments."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Tool(Generic[ArgsT]):
    """A function the model may call.

    The JSON schema offered to the model is generated from `args_model`, and the arguments the
    model sends are validated by the same model before `func` runs.
    """

    name: str
    description: str
    args_model: type[ArgsT]
    func: Callable[[ArgsT, ToolContext], Awaitable[JSONObject]] = field(repr=False)
    is_configured: Callable[[ToolConfig], bool] = field(repr=False)
    """Whether `config` holds what the tool needs; an unconfigured tool is not offered."""
