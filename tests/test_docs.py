"""The integrator's reference is generated from the code and committed up to date (`make docs`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from scripts import gen_docs
from service.schemas import CancelRequest, ChatRequest, CompletedEvent, FailedEvent, HubPayload

CHANNELS = {
    "chat-requests": ("receive", ChatRequest),
    "chat-completed": ("send", CompletedEvent),
    "chat-failed": ("send", FailedEvent),
    # Replica mode's shard queues (README "Running replicas").
    "chat-request-shards": ("receive", ChatRequest),
    "chat-cancel": ("receive", CancelRequest),
}


@pytest.fixture(scope="module")
def generated() -> str:
    return gen_docs.render_asyncapi()


@pytest.fixture(scope="module")
def document(generated: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(generated)
    return loaded


def test_committed_asyncapi_document_is_up_to_date(generated: str) -> None:
    committed = gen_docs.ASYNCAPI.read_text(encoding="utf-8")
    assert committed == generated, "docs/asyncapi.yaml is out of date: run `make docs`"


def test_asyncapi_is_version_3_with_the_request_channel_and_both_event_channels(
    document: dict[str, Any],
) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "Assistant streaming service"
    assert set(document["channels"]) == set(CHANNELS)
    assert document["channels"]["chat-requests"]["address"] == "assistant.request"
    assert document["channels"]["chat-completed"]["address"] == "assistant.request.completed"
    assert document["channels"]["chat-failed"]["address"] == "assistant.request.failed"
    assert document["channels"]["chat-cancel"]["address"] == "assistant.request.cancel"
    for name, (action, _) in CHANNELS.items():
        assert document["operations"][name]["action"] == action
        assert document["channels"][name]["title"]
        assert document["channels"][name]["description"]
    # No credentials in the server entry.
    assert document["servers"]["development"]["host"] == "localhost:5672"


@pytest.mark.parametrize("channel", list(CHANNELS))
def test_each_message_has_a_title_its_docstring_and_a_valid_example(
    document: dict[str, Any], channel: str
) -> None:
    _, model = CHANNELS[channel]
    message = _message(document, channel)
    assert message["name"] == model.__name__
    assert message["title"]
    docstring_start = " ".join((model.__doc__ or "").split()[:6])
    assert message["summary"].startswith(docstring_start)
    assert message["contentType"] == "application/json"
    (example,) = message["examples"]
    model.model_validate(example["payload"])  # the example is a valid message


def test_request_schema_documents_every_field_of_the_model(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ChatRequest"]
    assert set(schema["properties"]) == set(ChatRequest.model_fields)
    assert set(schema["required"]) == {"message", "channel"}
    for field in ChatRequest.model_fields:
        assert schema["properties"][field]["description"]


def test_hub_payload_json_schema_is_committed_up_to_date() -> None:
    committed = json.loads(gen_docs.HUB_SCHEMA.read_text(encoding="utf-8"))
    assert committed == json.loads(gen_docs.render_hub_schema()), "run `make docs`"
    assert set(committed["properties"]) == set(HubPayload.model_fields)


def test_readme_payload_table_matches_the_hub_payload_model() -> None:
    readme = gen_docs.README.read_text(encoding="utf-8")
    assert gen_docs.readme_with_table(readme) == readme, "README payload table: run `make docs`"
    table = gen_docs.render_payload_table()
    for name, field in HubPayload.model_fields.items():
        always = "yes" if field.is_required() else "no"
        assert f"| `{name}` |" in table and f"| {always} | {field.description} |" in table


def _message(document: dict[str, Any], channel: str) -> dict[str, Any]:
    (ref,) = document["channels"][channel]["messages"].values()
    key = ref["$ref"].rsplit("/", 1)[-1]
    message: dict[str, Any] = document["components"]["messages"][key]
    return message
