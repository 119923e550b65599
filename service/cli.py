"""`python -m service …`: the operator's commands (contract §1).

    python -m service assistant create      the remote assistant (assistants backend), or the
                                            local definition (responses backend)
    python -m service assistant delete ID   delete a remote assistant
    python -m service thread create         a thread (assistants) or a conversation (responses)
    python -m service chat [--thread ID]    a terminal chat with the running service

Each command group is one `add_*_commands(commands)` function listed in `COMMAND_GROUPS`: a new
command is one more function there. A command is `async (settings, args) -> exit status`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias

import httpx2
import openai
from openai import AsyncOpenAI

from service.assistant.assistants import legacy_api
from service.config import Settings, load_settings
from service.runtime import openai_client, tool_config
from service.tools import ToolRegistry

Command: TypeAlias = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

ASSISTANT_HEADER = "=== ASSISTANT ID ==="
THREAD_HEADER = "=== TEST THREAD ID ==="
THREAD_FOOTER = "====================="  # the seed's footer, one shorter than its header


def print_block(header: str, value: str, footer: str | None = None) -> None:
    """The seed's copy-paste block: header, value, a line of `=`."""
    print(header)
    print(value)
    print(footer or "=" * len(header))


# --- assistant ------------------------------------------------------------------------------


def add_assistant_commands(commands: Commands) -> None:
    group = commands.add_parser("assistant", help="create or delete the assistant")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create the remote assistant from settings.toml (assistants backend); "
        "show the local definition (responses backend)",
    )
    create.set_defaults(command=assistant_create)
    delete = actions.add_parser("delete", help="delete a remote assistant (Assistants API)")
    delete.add_argument("assistant_id", metavar="ID", help="the assistant's id, asst_…")
    delete.set_defaults(command=assistant_delete)


async def assistant_create(settings: Settings, args: argparse.Namespace) -> int:
    async with httpx2.AsyncClient() as http:
        tools = ToolRegistry.from_config(tool_config(settings), http)
        print(
            f"Tools: {', '.join(tools.names) or 'none'} "
            "(a tool whose API key or URL is not set is left out)",
            file=sys.stderr,
        )
        if settings.openai_api != "assistants":
            definition = {
                "name": settings.assistant_name,
                "model": settings.openai_model,
                "instructions": settings.assistant_instructions,
                "tools": tools.responses_definitions(),
            }
            print(
                "OPENAI_API=responses: nothing to create remotely. The assistant is defined "
                "in settings.toml and sent with every request:"
            )
            print(json.dumps(definition, indent=2, ensure_ascii=False))
            return 0
        definitions: Any = tools.assistants_definitions()
    async with _client(settings) as client:
        with legacy_api():
            call = client.beta.assistants.create(
                model=settings.openai_model,
                name=settings.assistant_name,
                instructions=settings.assistant_instructions or openai.omit,
                tools=definitions,
            )
        assistant = await call
    print_block(ASSISTANT_HEADER, assistant.id)
    print("Set OPENAI_ASSISTANT_ID to this id (in .env or the environment).", file=sys.stderr)
    return 0


async def assistant_delete(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        with legacy_api():
            call = client.beta.assistants.delete(args.assistant_id)
        deleted = await call
    print(f"Deleted assistant {deleted.id}" if deleted.deleted else f"Not deleted: {deleted.id}")
    return 0 if deleted.deleted else 1


# --- thread ---------------------------------------------------------------------------------


def add_thread_commands(commands: Commands) -> None:
    group = commands.add_parser("thread", help="create a thread or conversation to test with")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", help="create a thread (assistants backend) or conversation (responses backend)"
    )
    create.set_defaults(command=thread_create)


async def thread_create(settings: Settings, args: argparse.Namespace) -> int:
    async with _client(settings) as client:
        if settings.openai_api == "assistants":
            with legacy_api():
                call = client.beta.threads.create()
            thread_id = (await call).id
        else:
            thread_id = (await client.conversations.create()).id
    print_block(THREAD_HEADER, thread_id, THREAD_FOOTER)
    return 0


# --- chat -----------------------------------------------------------------------------------


def add_chat_commands(commands: Commands) -> None:
    chat = commands.add_parser(
        "chat", help="a terminal chat with the running service (through RabbitMQ and the hub)"
    )
    chat.add_argument("--thread", metavar="ID", help="reuse this thread/conversation")
    chat.add_argument("--channel", metavar="NAME", help="hub channel (default: the thread id)")
    chat.add_argument("--timeout", type=float, metavar="SECONDS", help="longest wait per answer")
    chat.set_defaults(command=chat_command)


async def chat_command(settings: Settings, args: argparse.Namespace) -> int:
    from service.chat import run_chat  # see service/chat.py

    return await run_chat(
        settings, thread_id=args.thread, channel=args.channel, timeout=args.timeout
    )


# --- the parser -----------------------------------------------------------------------------

COMMAND_GROUPS: list[Callable[[Commands], None]] = [
    add_assistant_commands,
    add_thread_commands,
    add_chat_commands,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Operator commands of the assistant streaming service. Settings come from "
        "settings.toml, .env and the environment (OPENAI_API selects the backend).",
    )
    commands = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for add_commands in COMMAND_GROUPS:
        add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    command: Command = args.command
    try:
        return asyncio.run(command(settings, args))
    except openai.APIStatusError as exc:
        print(
            f"error: the OpenAI API answered HTTP {exc.status_code}: {exc.message}", file=sys.stderr
        )
    except openai.APIConnectionError:
        where = settings.openai_base_url or "the OpenAI API"
        print(f"error: could not connect to {where}", file=sys.stderr)
    except ValueError as exc:  # a misconfiguration, e.g. an unknown name in ASSISTANT_TOOLS
        print(f"error: {exc}", file=sys.stderr)
    return 1


def _client(settings: Settings) -> AsyncOpenAI:
    return openai_client(settings)
