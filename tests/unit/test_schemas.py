"""schemas/ holds what the pydantic models generate; specs point editors at them."""

from __future__ import annotations

import json

import jsonschema
import pytest
from ruamel.yaml import YAML

from controller.api import KINDS
from controller.schemas import schema_file, stale_schemas
from tests.conftest import PROJECT_ROOT

SPEC_FILES = sorted(
    p for p in (PROJECT_ROOT / "specs").rglob("*.yaml") if "_presets" not in p.parts
)


def test_committed_schemas_are_current() -> None:
    assert stale_schemas(PROJECT_ROOT) == [], "run 'llmops schemas' and commit schemas/"


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_specs_carry_a_modeline_and_validate_against_it(path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    schema_path = (path.parent / first.split("$schema=", 1)[1]).resolve()
    document = YAML(typ="safe").load(path.read_text())
    assert schema_path.name == schema_file(document["kind"])
    jsonschema.validate(document, json.loads(schema_path.read_text()))


def test_schema_rejects_unknown_fields() -> None:
    schema = json.loads((PROJECT_ROOT / "schemas" / schema_file("Model")).read_text())
    doc = {
        "apiVersion": "llmops/v1",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": {"source": {"type": "local", "path": "m"}, "typo": 1},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_one_schema_per_kind() -> None:
    assert {p.name for p in (PROJECT_ROOT / "schemas").glob("*.json")} == {
        schema_file(k) for k in KINDS
    }
