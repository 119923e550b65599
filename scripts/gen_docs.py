"""`make docs`: write the integrator's reference from the code.

    docs/asyncapi.yaml            AsyncAPI 3.0: `faststream docs gen service.app:app --yaml`,
                                  with message titles and examples added
                                  (`service.observability.asyncapi.enrich`)
    docs/hub-payload.schema.json  JSON Schema of the WebSocket hub payload (`HubPayload`)
    README.md                     the payload table between the payload-table markers

Everything is generated from the defaults in settings.toml: the environment and any `.env`
are ignored, so the committed files do not depend on who ran `make docs`.

    python -m scripts.gen_docs            write what changed
    python -m scripts.gen_docs --check    exit 1 if a file is out of date (writes nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings
from service.observability.asyncapi import enrich, to_yaml
from service.schemas import HubPayload

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ASYNCAPI = DOCS / "asyncapi.yaml"
HUB_SCHEMA = DOCS / "hub-payload.schema.json"
README = ROOT / "README.md"
TABLE_START = "<!-- payload-table:start -->"
TABLE_END = "<!-- payload-table:end -->"


def render_asyncapi() -> str:
    """Run `faststream docs gen` on the app with default settings; enrich its document."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    with tempfile.TemporaryDirectory() as tmp:  # also: no `.env` in the working directory
        out = Path(tmp) / "asyncapi.yaml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "faststream",
                "docs",
                "gen",
                "service.app:app",
                "--yaml",
                "--out",
                str(out),
                "--app-dir",
                str(ROOT),
            ],
            cwd=tmp,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        document = yaml.safe_load(out.read_text(encoding="utf-8"))
    return to_yaml(enrich(document))


def render_hub_schema() -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema |= HubPayload.model_json_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def render_payload_table() -> str:
    """The README table of the hub payload fields, from `HubPayload`'s JSON Schema."""
    schema = HubPayload.model_json_schema()
    required = set(schema.get("required", []))
    rows = ["| field | type | always | meaning |", "|---|---|---|---|"]
    for name, field in schema["properties"].items():
        always = "yes" if name in required else "no"
        meaning = str(field.get("description", "")).replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(field, schema)} | {always} | {meaning} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    """The README text with the block between the markers replaced by the current table."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {TABLE_START!r} ... {TABLE_END!r} block")
    return readme[: start + len(TABLE_START)] + "\n" + render_payload_table() + "\n" + readme[end:]


def _type(field: dict[str, Any], schema: dict[str, Any]) -> str:
    options = field.get("anyOf", [field])
    kinds = [_kind(option, schema) for option in options if option.get("type") != "null"]
    return " or ".join(kinds) + (" or null" if len(options) > len(kinds) else "")


def _kind(option: dict[str, Any], schema: dict[str, Any]) -> str:
    ref = option.get("$ref")
    if ref:
        target = schema["$defs"][ref.rsplit("/", 1)[-1]]
        return "string" if "enum" in target else str(target.get("type", "object"))
    return str(option.get("type", "any"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.gen_docs", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    wanted: dict[Path, str] = {ASYNCAPI: render_asyncapi(), HUB_SCHEMA: render_hub_schema()}
    if README.exists():
        try:
            wanted[README] = readme_with_table(README.read_text(encoding="utf-8"))
        except ValueError as exc:
            print(f"note: {exc}; the table is:\n{render_payload_table()}", file=sys.stderr)
    stale = [
        path
        for path, text in wanted.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    for path in stale:
        name = path.relative_to(ROOT)
        if args.check:
            print(f"out of date: {name} (run `make docs`)", file=sys.stderr)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path], encoding="utf-8")
            print(f"wrote {name}")
    if not stale:
        print("docs are up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
