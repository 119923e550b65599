"""Start-up: settings, import without network, the declared topology, bounded prefetch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.config import ConfigurationError, load_settings
from tests.conftest import Fakes, start_stack
from tests.harness import ROOT, ServiceNames, ServiceProcess

# -- settings ------------------------------------------------------------------------------


def test_defaults_come_from_settings_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every key of settings.toml is what the service runs with (the environment cleared)."""
    documented = tomllib.loads((ROOT / "settings.toml").read_text())
    for name in documented:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SETTINGS_FILE", raising=False)
    settings = load_settings(dotenv_dir=tmp_path)
    loaded = settings.model_dump()
    for name, value in documented.items():
        got = loaded[name.lower()]
        got = got.get_secret_value() if isinstance(got, SecretStr) else got
        expected = tuple(value) if isinstance(value, list) else value
        assert got == expected, name
    # Values the Python defaults do not have: these fail if the file is not read.
    assert settings.assistant_instructions.startswith("You are a helpful assistant")
    assert settings.assistant_tools == tuple(documented["ASSISTANT_TOOLS"])
    assert settings.events_exchange_name == "assistant_events"


def test_a_missing_settings_file_stops_the_service(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SETTINGS_FILE"):
        load_settings(tmp_path / "nowhere.toml", dotenv_dir=tmp_path)


def test_an_installed_service_reads_its_packaged_settings_toml(tmp_path: Path) -> None:
    """A non-editable install, run from another directory, still reads settings.toml."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = (
        "import service.config as c; s = c.load_settings(); "
        "print(c.__file__); print(s.assistant_instructions[:30])"
    )
    env = {k: v for k, v in os.environ.items() if k != "SETTINGS_FILE"}
    env["PYTHONPATH"] = str(target)
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    module_file, instructions = done.stdout.splitlines()
    assert module_file.startswith(str(target))
    assert instructions == "You are a helpful assistant fo"


def test_environment_beats_dotenv_beats_settings_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("OPENAI_MODEL=from-dotenv\nQUEUE_NAME=q-dotenv\n")
    monkeypatch.setenv("QUEUE_NAME", "q-env")
    monkeypatch.setenv("MAX_CONCURRENCY", "7")
    monkeypatch.setenv("ASSISTANT_TOOLS", "get_weather, get_available_offices")
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    settings = load_settings(dotenv_dir=tmp_path)
    assert settings.openai_model == "from-dotenv"
    assert settings.queue_name == "q-env"
    assert settings.max_concurrency == 7
    assert settings.assistant_tools == ("get_weather", "get_available_offices")


def test_secrets_are_redacted_in_the_settings_log_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-abcdef123456")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://svc:hunter2pw@rabbit:5672/")
    monkeypatch.setenv("KMC_API_KEY", "kmc-secret-999")
    settings = load_settings()
    shown = json.dumps(settings.redacted())
    for secret in ("sk-live-abcdef123456", "hunter2pw", "kmc-secret-999"):
        assert secret not in shown
    assert "amqp://svc:***@rabbit:5672/" in shown
    assert {"sk-live-abcdef123456", "hunter2pw", "kmc-secret-999"} <= set(settings.secrets())


def test_importing_the_app_opens_no_connection() -> None:
    env = {
        **os.environ,
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:1/",
        "WEBSOCKET_URI": "ws://127.0.0.1:1",
    }
    code = "import service.app, socket; print(type(service.app.app).__name__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "FastStream" in done.stdout


# -- topology ------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


async def test_topology_is_declared_and_a_second_start_works(fakes: Fakes, log_dir: Path) -> None:
    async with start_stack(fakes, log_dir, "responses", MAX_CONCURRENCY=5) as stack:
        names = stack.names
        exchanges = {
            row[0]: row[1:] for row in _rabbitmqctl("list_exchanges", "name", "type", "durable")
        }
        assert exchanges[names.exchange] == ["direct", "true"]
        assert exchanges[names.dlx] == ["direct", "true"]
        assert exchanges[names.events_exchange] == ["topic", "true"]
        queues = {
            row[0]: row[1:] for row in _rabbitmqctl("list_queues", "name", "durable", "arguments")
        }
        durable, arguments = queues[names.queue]
        assert durable == "true"
        for expected in (names.dlx, "x-max-priority", "10", "x-message-ttl", "3600000"):
            assert expected in arguments
        assert queues[names.failed_queue][0] == "true"
        bindings = _rabbitmqctl("list_bindings", "source_name", "destination_name", "routing_key")
        assert [names.exchange, names.queue, names.routing_key] in bindings
        assert [names.dlx, names.failed_queue, names.routing_key] in bindings

        prefetch = [
            row[1]
            for row in _rabbitmqctl("list_consumers", "queue_name", "prefetch_count")
            if row[0] == names.queue
        ]
        assert prefetch == ["5"]

        second = ServiceProcess(names, stack.service.env, log_dir / f"{names.prefix}-2.log")
        second.start()
        try:
            await stack.broker.wait_consumer(count=2, timeout=30)
        finally:
            assert second.stop() == 0, second.log_text()[-2000:]
        body = stack.request("still fine")
        body["message_id"] = f"second-{ServiceNames.fresh().prefix}"
        await stack.broker.publish(body)
        assert (await stack.broker.wait_event(body["message_id"]))["event"] == "completed"


def test_an_unwritable_state_dir_stops_the_service_with_a_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    env = {**os.environ, "STATE_DIR": str(blocked / "state"), "HTTP_PORT": "0"}
    env["RABBITMQ_URL"] = "amqp://guest:guest@127.0.0.1:1/"  # never reached
    env["QUEUE_NAME"] = f"{ServiceNames.fresh().prefix}_requests"
    done = subprocess.run(
        [sys.executable, "-m", "faststream", "run", "service.app:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "STATE_DIR" in done.stderr + done.stdout
