"""Settings: `settings.toml` + `.env` + environment, read once into one typed object.

Code receives a `Settings`; nothing else in the service reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from dynaconf import Dynaconf
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from service.redaction import MASK, MIN_SECRET_LENGTH, redact_url, url_password


class ConfigurationError(RuntimeError):
    """The settings cannot work; the message says what to change or run."""


# Package data (a link to the top-level settings.toml in a source checkout), so an installed
# service finds its defaults wherever it runs. SETTINGS_FILE in the environment names another.
DEFAULT_SETTINGS_FILE = Path(__file__).resolve().parent / "settings.toml"


class Settings(BaseModel):
    """Every tunable of the service; field names are the lower-cased setting names."""

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    openai_api: Literal["responses", "assistants"] = "responses"
    openai_model: str = "gpt-4o-mini"
    openai_assistant_id: str = ""
    openai_max_attempts: int = Field(3, ge=1, le=10)
    openai_retry_backoff: float = Field(0.5, ge=0)
    openai_http_client: Literal["aiohttp", "httpx"] = "aiohttp"

    assistant_name: str = "KMC Assistant"
    assistant_instructions: str = ""
    assistant_tools: tuple[str, ...] = ()

    openweather_api_key: SecretStr = SecretStr("")
    openweather_base_url: str = "https://api.openweathermap.org"
    kmc_api_url: str = ""
    kmc_api_key: SecretStr = SecretStr("")
    tool_timeout: float = Field(15, gt=0)
    tool_output_max_chars: int = Field(16000, ge=256)

    websocket_uri: str = "ws://localhost:4000"
    websocket_token: SecretStr = SecretStr("")
    hub_buffer_size: int = Field(20000, ge=16)
    hub_buffer_bytes: int = Field(64 * 2**20, ge=65536)
    hub_send_timeout: float = Field(5, gt=0)
    hub_reconnect_min: float = Field(0.2, gt=0)
    hub_reconnect_max: float = Field(5, gt=0)
    delta_flush_ms: int = Field(30, ge=0)
    delta_flush_chars: int = Field(200, ge=1)

    rabbitmq_url: SecretStr = SecretStr("amqp://guest:guest@localhost:5672/")
    exchange_name: str = "assistant"
    queue_name: str = "assistant_requests"
    routing_key: str = "assistant.request"
    events_exchange: str = ""
    max_concurrency: int = Field(32, ge=1, le=10000)
    max_deliveries: int = Field(3, ge=1)

    queue_type: Literal["classic", "quorum"] = "classic"
    redis_url: SecretStr = SecretStr("")
    # Replicas (REDIS_URL set): how many shard queues requests are routed to.
    replica_shards: int = Field(12, ge=1, le=1024)

    # Delivery state (service/coordination): see settings.toml "Delivery state".
    state_dir: str = ".state"
    state_max_bytes: int = Field(4_000_000, ge=10_000)
    lease_ttl: float = Field(5, gt=0)
    run_record_ttl: float = Field(3600, gt=0)

    on_busy: Literal["enqueue", "reject", "interrupt", "rollback"] = "enqueue"
    openai_background: bool = False
    hub_protocol: Literal["envelope", "nchan"] = "envelope"
    hub_payload_mode: Literal["full", "compact"] = "full"
    hub_public_url: str = ""
    web_chat: bool = False
    web_chat_token: SecretStr = SecretStr("")

    run_timeout: float = Field(300, gt=0)
    stream_idle_timeout: float = Field(60, gt=0)
    shutdown_grace: float = Field(15, ge=0)

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535)

    tracing_enabled: bool = False
    tracing_exporter: Literal["otlp", "console", "none"] = "otlp"
    tracing_otlp_endpoint: str = ""
    tracing_service_name: str = "assistant-streaming-service"

    @field_validator("assistant_tools", mode="before")
    @classmethod
    def _split_tool_names(cls, value: Any) -> Any:
        # From the environment a list arrives as "a,b" (or TOML "['a','b']", parsed by dynaconf).
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @property
    def events_exchange_name(self) -> str:
        return self.events_exchange or f"{self.exchange_name}_events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.exchange_name}_dlx"

    @property
    def failed_queue(self) -> str:
        return f"{self.queue_name}_failed"

    def secrets(self) -> list[str]:
        """Every secret value, for redaction."""
        values = [
            self.openai_api_key.get_secret_value(),
            self.openweather_api_key.get_secret_value(),
            self.kmc_api_key.get_secret_value(),
            self.websocket_token.get_secret_value(),
            self.web_chat_token.get_secret_value(),
        ]
        for url in (self.rabbitmq_url, self.redis_url):
            password = url_password(url.get_secret_value())
            if password:
                values.append(password)
        return [value for value in values if len(value) >= MIN_SECRET_LENGTH]

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict fit for a log line: secrets masked, URL passwords removed."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                raw = value.get_secret_value()
                shown[name] = redact_url(raw) if "://" in raw else (MASK if raw else "")
            else:
                shown[name] = value
        return shown


def load_settings(
    settings_file: Path | str | None = None,
    *,
    dotenv_dir: Path | str | None = None,
    **overrides: Any,
) -> Settings:
    """Read `settings.toml`, then `.env` in the working directory, then the environment.

    Only the settings named by `Settings` are taken; the rest of the environment is ignored.
    """
    dotenv_path = Path(dotenv_dir or Path.cwd()) / ".env"
    path = Path(settings_file or os.environ.get("SETTINGS_FILE") or DEFAULT_SETTINGS_FILE)
    if not path.is_file():
        # Never run silently on the Python defaults: they are not the documented ones.
        raise ConfigurationError(f"settings file {path} not found (set SETTINGS_FILE)")
    source = Dynaconf(
        settings_files=[str(path)],
        environments=False,
        envvar_prefix=False,
        load_dotenv=True,
        dotenv_path=str(dotenv_path),
        merge_enabled=False,
    )
    values = {name: source.get(name.upper()) for name in Settings.model_fields}
    values = {name: value for name, value in values.items() if value is not None}
    values.update(overrides)
    return Settings.model_validate(values)
