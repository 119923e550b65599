"""The AsyncAPI document as integrators read it, served at `/docs/asyncapi` and by `make docs`.

FastStream (AsyncAPI 3.0) builds channels, operations and payload schemas from the subscriber,
the publishers and the models, but its message objects carry neither examples nor a readable
title. This adds, for each message, a name, a title, a summary and a description from the
payload model's docstring, and message `examples` from the model's JSON Schema examples
(`json_schema_extra`); docstring line breaks are unwrapped into paragraphs. It also adds the
cancel channel (contract §8), which each process consumes through its own queue outside
FastStream's subscribers (`service.handlers.cancel.CancelFeed`), so FastStream cannot see it.
"""

from __future__ import annotations

import copy
import inspect
import re
from io import StringIO
from typing import Any, Protocol

import yaml
from faststream.specification.base import SpecificationFactory

from service.schemas import CancelRequest

JSON = dict[str, Any]


class Documented(Protocol):
    """A FastStream application (anything with an AsyncAPI schema factory)."""

    @property
    def schema(self) -> SpecificationFactory: ...


def asyncapi_document(app: Documented) -> JSON:
    """The app's AsyncAPI document, as a JSON-able dict, with the additions above."""
    return enrich(app.schema.to_specification().to_jsonable())


def enrich(document: JSON) -> JSON:
    """A copy of a FastStream AsyncAPI 3.0 document with message titles and examples."""
    document = copy.deepcopy(document)
    _add_cancel_channel(document)
    _unwrap_descriptions(document)
    _order(document)
    components = document.get("components", {})
    schemas: JSON = components.get("schemas", {})
    for channel_key, channel in document.get("channels", {}).items():
        if "title" not in channel:
            document["channels"][channel_key] = {"title": _sentence(channel_key), **channel}
    messages: JSON = components.get("messages", {})
    _add_replica_channels(document)
    for key, message in messages.items():
        payload: JSON = message.get("payload", {})
        ref = payload.get("$ref", "")
        name = ref.rsplit("/", 1)[-1] if ref else str(payload.get("title", key))
        schema: JSON = schemas.get(name, payload)
        messages[key] = _message(name, schema, message)
    return document


CANCEL_CHANNEL = "chat-cancel"
CANCEL_DESCRIPTION = """Cancels (contract §8), published by upstream to the requests exchange
with routing key `<ROUTING_KEY>.cancel`. Every service process binds its own exclusive,
auto-delete queue `<QUEUE_NAME>.cancel.<random>` with that key, so the direct exchange copies
each cancel to every replica and whichever holds the request ends it within a second. Not
acknowledged: a cancel that arrives while no process runs is lost, like the stop button of a
closed page. A malformed cancel is logged, counted and dropped."""


def _add_cancel_channel(document: JSON) -> None:
    """The cancel channel, its operation, message and schema, next to the chat requests."""
    requests = document.get("operations", {}).get("chat-requests")
    if requests is None or CANCEL_CHANNEL in document.get("channels", {}):
        return
    routing_key = requests["bindings"]["amqp"]["cc"][0]
    queue = document["channels"]["chat-requests"]["bindings"]["amqp"]["queue"]
    message_key = f"{CANCEL_CHANNEL}:SubscribeMessage"
    document["channels"][CANCEL_CHANNEL] = {
        "address": f"{routing_key}.cancel",
        "description": CANCEL_DESCRIPTION,
        "servers": copy.deepcopy(document["channels"]["chat-requests"].get("servers", [])),
        "messages": {"SubscribeMessage": {"$ref": f"#/components/messages/{message_key}"}},
        "bindings": {
            "amqp": {
                "is": "queue",
                "bindingVersion": "0.3.0",
                "queue": {
                    "name": f"{queue['name']}.cancel.<random>",
                    "durable": False,
                    "exclusive": True,
                    "autoDelete": True,
                    "vhost": queue.get("vhost", "/"),
                },
            }
        },
    }
    document["operations"][CANCEL_CHANNEL] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{CANCEL_CHANNEL}"},
        "bindings": {
            "amqp": {"cc": [f"{routing_key}.cancel"], "ack": False, "bindingVersion": "0.3.0"}
        },
        "messages": [{"$ref": f"#/channels/{CANCEL_CHANNEL}/messages/SubscribeMessage"}],
    }
    components = document.setdefault("components", {})
    components.setdefault("messages", {})[message_key] = {
        "title": message_key,
        "payload": {"$ref": "#/components/schemas/CancelRequest"},
    }
    schema = CancelRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.setdefault("schemas", {})["CancelRequest"] = schema


def to_yaml(document: JSON) -> str:
    """YAML the way `faststream docs gen --yaml` writes it, but with Unicode left readable."""
    out = StringIO(newline="\n")
    yaml.safe_dump(document, out, sort_keys=False, allow_unicode=True, width=100)
    return out.getvalue()


def _order(document: JSON) -> None:
    # FastStream lists publishers in set order (it varies with PYTHONHASHSEED): received
    # channels first, then by name, so that the document is the same on every run.
    actions = {
        key: operation.get("action", "")
        for key, operation in document.get("operations", {}).items()
    }

    def ordered(section: JSON) -> JSON:
        keys = sorted(section, key=lambda k: (actions.get(k.split(":")[0]) != "receive", k))
        return {key: section[key] for key in keys}

    for name in ("channels", "operations"):
        if name in document:
            document[name] = ordered(document[name])
    components = document.get("components", {})
    for name in ("messages", "schemas"):
        if name in components:
            components[name] = ordered(components[name])


def _message(name: str, schema: JSON, original: JSON) -> JSON:
    description = schema.get("description")
    title = _sentence(name)
    message: JSON = {"name": name, "title": title}
    if description:
        message["summary"] = _first_sentence(description)
        if message["summary"] != description:
            message["description"] = description
    message["contentType"] = "application/json"
    message |= {k: v for k, v in original.items() if k not in message and k != "title"}
    examples = schema.get("examples") or []
    if examples:
        message["examples"] = [
            {
                "name": f"{name}{i + 1 if len(examples) > 1 else ''}",
                "summary": f"{title} (illustrative values)",
                "payload": copy.deepcopy(example),
            }
            for i, example in enumerate(examples)
        ]
    return message


def _first_sentence(text: str) -> str:
    paragraph = text.split("\n\n", 1)[0]
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph, re.S)
    return match.group(1) if match else paragraph


def _sentence(identifier: str) -> str:
    """`ChatRequest` / `chat-requests` → `Chat request` / `Chat requests`."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", identifier).replace("-", " ").replace("_", " ")
    words = words.lower().strip()
    return words[:1].upper() + words[1:]


def _unwrap_descriptions(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = _unwrap(value)
            else:
                _unwrap_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _unwrap_descriptions(item)


def _unwrap(text: str) -> str:
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


SHARDS_CHANNEL = "chat-request-shards"


def _add_replica_channels(document: JSON) -> None:
    """The shard queues of replica mode (REDIS_URL set; README "Running replicas").

    They are consumed and published by the replica set's own AMQP connection, not by a
    FastStream subscriber, so they are described here from the chat-requests channel.
    """
    channels: JSON = document.setdefault("channels", {})
    requests = channels.get("chat-requests")
    if requests is None or SHARDS_CHANNEL in channels:
        return
    queue = requests.get("bindings", {}).get("amqp", {}).get("queue", {}).get("name", "")
    queue = queue or "<QUEUE_NAME>"
    messages: JSON = document.setdefault("components", {}).setdefault("messages", {})
    first: JSON = next(iter(requests.get("messages", {}).values()), {})
    source = str(first.get("$ref", ""))
    original = messages.get(source.rsplit("/", 1)[-1], {})
    message = copy.deepcopy(original)
    message["headers"] = {
        "type": "object",
        "properties": {
            "x-service-redelivered": {
                "type": "boolean",
                "description": "Set by the router when the QUEUE_NAME copy it forwards was "
                "redelivered by the broker: the shard consumer treats the request as a "
                "redelivered copy (never as a fresh publish of its message_id).",
            }
        },
    }
    messages[f"{SHARDS_CHANNEL}:Message"] = message
    channels[SHARDS_CHANNEL] = {
        "title": "Chat request shards",
        "address": f"{queue}.shard.{{shard}}",
        "description": (
            "Replica mode only (REDIS_URL set). The replica holding the Redis lease "
            f"`{queue}:router` consumes `{queue}` and republishes each valid request, "
            "unchanged and persistent, through the default exchange to the shard queue of its "
            f"conversation, `{queue}.shard.<k>` (k < REPLICA_SHARDS), with publisher confirms, "
            "in delivery order; then it acks the original. Each shard queue is durable, has "
            "the arguments of the request queue plus `x-single-active-consumer: true` and "
            "`x-dead-letter-routing-key: <ROUTING_KEY>` (dead letters still reach "
            f"`{queue}_failed`), is a quorum queue when QUEUE_TYPE=quorum, and is consumed by "
            "the one replica holding its Redis lease. Upstream never publishes here."
        ),
        "parameters": {"shard": {"description": "The shard index, 0 to REPLICA_SHARDS - 1."}},
        "servers": requests.get("servers", []),
        "messages": {"Message": {"$ref": f"#/components/messages/{SHARDS_CHANNEL}:Message"}},
        "bindings": {
            "amqp": {
                "is": "queue",
                "bindingVersion": "0.3.0",
                "queue": {
                    "name": f"{queue}.shard.{{shard}}",
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
            }
        },
    }
    operations: JSON = document.setdefault("operations", {})
    reference = [{"$ref": f"#/channels/{SHARDS_CHANNEL}/messages/Message"}]
    operations[f"{SHARDS_CHANNEL}-route"] = {
        "action": "send",
        "title": "Route a request to its shard",
        "channel": {"$ref": f"#/channels/{SHARDS_CHANNEL}"},
        "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": "0.3.0"}},
        "messages": reference,
    }
    operations[SHARDS_CHANNEL] = {
        "action": "receive",
        "title": "Run the requests of the shards this replica holds",
        "channel": {"$ref": f"#/channels/{SHARDS_CHANNEL}"},
        "bindings": {"amqp": {"ack": True, "bindingVersion": "0.3.0"}},
        "messages": reference,
    }
