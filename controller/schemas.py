"""JSON Schemas for every kind, written to schemas/ for editors and kept in sync by a test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.api import API_VERSION, KINDS

SCHEMA_DIR = "schemas"
SCHEMA_BASE_URL = "https://llmops.dev/schemas/v1/"


def schema_file(kind: str) -> str:
    return f"{kind.lower()}.schema.json"


def kind_json_schema(kind: str) -> dict[str, Any]:
    schema = KINDS[kind].model_json_schema(by_alias=True, mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_BASE_URL + schema_file(kind),
        "title": f"{API_VERSION} {kind}",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def render_schemas() -> dict[str, str]:
    """File name -> text for every kind."""
    return {
        schema_file(kind): json.dumps(kind_json_schema(kind), indent=2, sort_keys=True) + "\n"
        for kind in KINDS
    }


def stale_schemas(root: Path) -> list[str]:
    """Schema files that are missing or differ from what the models generate."""
    folder = root / SCHEMA_DIR
    stale = []
    for name, text in render_schemas().items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def write_schemas(root: Path) -> list[str]:
    folder = root / SCHEMA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(name)
    return written
