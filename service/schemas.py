"""The contract as models: the chat request, the hub payload, the completed and failed events.

These docstrings and field descriptions are what the AsyncAPI document and the README show.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

CHANNEL_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"

ChannelName = Annotated[str, StringConstraints(pattern=CHANNEL_PATTERN)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class ErrorCode(StrEnum):
    """Why a request did not complete (contract §6)."""

    INVALID_REQUEST = "invalid_request"
    THREAD_NOT_FOUND = "thread_not_found"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    WEBSOCKET_UNAVAILABLE = "websocket_unavailable"
    CANCELLED = "cancelled"
    INTERNAL = "internal"
    CONVERSATION_BUSY = "conversation_busy"


class OnBusy(StrEnum):
    """What a request does when its conversation is busy (contract §8)."""

    ENQUEUE = "enqueue"
    REJECT = "reject"
    INTERRUPT = "interrupt"
    ROLLBACK = "rollback"


class ChatRequest(BaseModel):
    """A chat request: one user message to run through the assistant on a conversation.

    Published by upstream services to the requests exchange with the requests routing key,
    as JSON. The answer streams to the WebSocket hub on `channel`; one `completed` or
    `failed` event follows on the events exchange.
    """

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "message": "What's the weather in Makati?",
                    "channel": "conv_abc123",
                    "thread_id": None,
                    "message_id": "m-42",
                    "metadata": {"user": "u1"},
                }
            ]
        },
    )

    message: Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=32_000, strict=True),
        Field(description="The user's message, 1 to 32,000 characters after trimming."),
    ]
    channel: Annotated[
        ChannelName,
        Field(
            description="WebSocket hub channel the answer streams to; also the thread or "
            "conversation id unless `thread_id` is given. 1-200 characters of [A-Za-z0-9_.:-]."
        ),
    ]
    thread_id: Annotated[
        ChannelName | None,
        Field(description="Thread (Assistants) or conversation (Responses) to run on."),
    ] = None
    message_id: Annotated[
        str | None,
        StringConstraints(min_length=1, max_length=200, strict=True),
        Field(
            description="Echoed in every payload and event. Defaults to the AMQP message_id, "
            "else a generated id."
        ),
    ] = None
    metadata: Annotated[
        dict[MetadataKey, MetadataValue],
        Field(description="Caller data, at most 16 keys; never sent to the model."),
    ] = Field(default_factory=dict)

    on_busy: Annotated[
        OnBusy | None,
        Field(
            description="What to do when the conversation is busy: enqueue, reject, interrupt "
            "or rollback (contract §8). Defaults to the ON_BUSY setting."
        ),
    ] = None

    @field_validator("metadata")
    @classmethod
    def _at_most_16_keys(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError("at most 16 metadata keys")
        return value

    @property
    def conversation_id(self) -> str:
        """The thread/conversation this request runs on."""
        return self.thread_id or self.channel


PayloadType = Literal["status", "response", "tool", "error", "timeout"]
PayloadStatus = Literal["started", "processing", "responding", "in_progress", "completed", "error"]


class ToolRef(BaseModel):
    """The tool call a `tool` payload is about."""

    name: str
    call_id: str


class PayloadError(BaseModel):
    """Why the request failed, on `error` and `timeout` payloads."""

    code: ErrorCode
    retryable: bool


class HubPayload(BaseModel):
    """One payload sent to the WebSocket hub as `{"channel": <channel>, "payload": <this>}`
    (with `HUB_PROTOCOL=nchan`: this object alone, published to `<WEBSOCKET_URI>/<channel>`).

    For one request: `started` first; `processing`/`tool` payloads when the model calls tools;
    `responding` once before the first text; `in_progress` text payloads; then exactly one
    final payload (`final_message: true`): `completed` with the whole answer, or an error.
    """

    model_config = ConfigDict(extra="forbid")

    type: PayloadType = Field(description="status, response, tool, error or timeout")
    status: PayloadStatus = Field(
        description="started, processing, responding, in_progress, completed or error"
    )
    message: str = Field(
        description="Human text; on `response` payloads the whole answer so far (compact "
        'mode: `""` on `in_progress` payloads that are not snapshots). When the model '
        "declines, its refusal text is the answer (streamed and completed like any text)"
    )
    delta: str | None = Field(
        None, description="On `response` payloads: the text added since the previous one"
    )
    final_message: bool = Field(description="True only on the last payload of a request")
    timestamp: float = Field(description="UNIX seconds")
    seq: int = Field(ge=0, description="0, 1, 2, ... per request, no gaps")
    message_id: str = Field(description="From the request")
    thread_id: str = Field(description="The thread/conversation the request ran on")
    tool: ToolRef | None = Field(None, description="On `tool` payloads")
    error: PayloadError | None = Field(None, description="On `error`/`timeout` payloads")
    error_details: str | None = Field(None, description="Short safe text on `error`/`timeout`")
    snapshot: bool | None = Field(
        None,
        description="(v2) HUB_PAYLOAD_MODE=compact: true on the `in_progress` payloads whose "
        "`message` is the whole answer so far (the one that brings the answer past 1,000 "
        "characters, then each one that brings it to at least twice the previous snapshot's "
        'length); other compact `in_progress` payloads carry `message: ""` and only `delta`. '
        "Absent or false on every other payload and in `full` mode.",
    )


class HubFrame(BaseModel):
    """The frame the hub receives: a channel name and a payload."""

    channel: str
    payload: HubPayload


class ToolCallRecord(BaseModel):
    """One tool call made during a run."""

    name: str = Field(description="The tool's function name")
    call_id: str = Field(description="The model's id for this call")
    ok: bool = Field(description="False when the tool returned an error to the model")
    duration_ms: int = Field(description="How long the call took")


class Usage(BaseModel):
    """Tokens the model used for the whole request."""

    input_tokens: int = Field(description="Prompt tokens, summed over the request's model turns")
    output_tokens: int = Field(description="Generated tokens, summed over the model turns")


class CompletedEvent(BaseModel):
    """Published to the events exchange with routing key `<ROUTING_KEY>.completed` when a
    request's answer is complete. Exactly one final event (this or `failed`) per request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event": "completed",
                    "message_id": "m-42",
                    "channel": "conv_abc123",
                    "thread_id": "conv_abc123",
                    "run_id": "resp_123",
                    "text": "It is 31°C and sunny in Makati.",
                    "tool_calls": [
                        {"name": "get_weather", "call_id": "call_1", "ok": True, "duration_ms": 120}
                    ],
                    "usage": {"input_tokens": 310, "output_tokens": 12},
                    "started_at": 1764000000.0,
                    "finished_at": 1764000001.5,
                    "duration_ms": 1500,
                    "hub_delivered": True,
                }
            ]
        }
    )

    event: Literal["completed"] = Field("completed", description="Always `completed`")
    message_id: str = Field(description="The request's message id")
    channel: str = Field(description="The request's hub channel")
    thread_id: str = Field(description="The thread/conversation the request ran on")
    run_id: str | None = Field(description="The response (Responses) or run (Assistants) id")
    text: str = Field(
        description="The whole answer; when the model declines, its refusal text "
        "(a refusal completes, it is not a failure)"
    )
    tool_calls: list[ToolCallRecord] = Field(description="Every tool call, in order")
    usage: Usage | None = Field(description="Token usage, when the API reported it")
    started_at: float = Field(description="UNIX seconds")
    finished_at: float = Field(description="UNIX seconds")
    duration_ms: int = Field(description="finished_at - started_at, in milliseconds")
    hub_delivered: bool = Field(
        True,
        description="False when the hub could not be reached before the request ended "
        "(`websocket_unavailable`): the text is here but browsers may have missed it.",
    )
    hub_error: ErrorCode | None = Field(
        None, description="`websocket_unavailable` when `hub_delivered` is false"
    )


class FailedEvent(BaseModel):
    """Published to the events exchange with routing key `<ROUTING_KEY>.failed` when a
    request could not be answered, including invalid requests (`invalid_request`)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event": "failed",
                    "message_id": "m-42",
                    "channel": "conv_abc123",
                    "thread_id": "conv_abc123",
                    "code": "thread_not_found",
                    "message": "Conversation conv_abc123 was not found",
                    "retryable": False,
                    "occurred_at": 1764000000.0,
                }
            ]
        }
    )

    event: Literal["failed"] = Field("failed", description="Always `failed`")
    message_id: str = Field(description="The request's message id (or the AMQP one, or generated)")
    channel: str | None = Field(description="The request's hub channel, when it could be read")
    thread_id: str | None = Field(description="The thread/conversation, when it could be read")
    code: ErrorCode = Field(description="The error code (contract §6)")
    message: str = Field(
        description="Short safe reason, never the model API's own text: e.g. `the conversation "
        "is too long for the model`, `the API key has no quota left` (README error table)"
    )
    retryable: bool = Field(description="True when publishing the same request again may work")
    occurred_at: float = Field(description="UNIX seconds")
    text: str = Field(
        "", description='The answer streamed to the hub before the failure (`""` when none)'
    )


class CancelRequest(BaseModel):
    """Published by upstream to the requests exchange with routing key `<ROUTING_KEY>.cancel`:
    stop a request by `message_id`, or every running or waiting request of a `channel`
    (contract §8). At least one of the two is set; when both are, both must match."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        json_schema_extra={"examples": [{"message_id": "m-42", "channel": None}]},
    )

    message_id: Annotated[
        str | None,
        StringConstraints(min_length=1, max_length=200, strict=True),
        Field(description="The request to cancel"),
    ] = None
    channel: Annotated[
        ChannelName | None,
        Field(description="Cancel every running or waiting request of this channel"),
    ] = None

    @model_validator(mode="after")
    def _one_of_them(self) -> CancelRequest:
        if self.message_id is None and self.channel is None:
            raise ValueError("a cancel needs a message_id or a channel")
        return self

    def matches(self, message_id: str, channel: str) -> bool:
        """True when this cancel targets the request (both fields must match when both set)."""
        if self.message_id is not None and self.message_id != message_id:
            return False
        return self.channel is None or self.channel == channel
