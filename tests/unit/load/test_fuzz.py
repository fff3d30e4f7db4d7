"""Property: no spec document, however broken, makes loading raise; only diagnostics come out."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from controller.load.desired import load_desired
from controller.load.diagnostics import Diagnostic
from controller.load.loader import load_text
from tests.conftest import PROJECT_ROOT

DEMO_SPECS = sorted((PROJECT_ROOT / "specs").rglob("*.yaml"))
SEEDS = [p.read_text(encoding="utf-8") for p in DEMO_SPECS if "_presets" not in p.parts]
_yaml = YAML(typ="safe", pure=True)
SEED_DOCS: list[dict[str, Any]] = [_yaml.load(text) for text in SEEDS]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["lora", "Model", "llmops/v1", "../../etc", "${x.y}", "hf_" + "a" * 34])
)
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=6,
)


def paths_of(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, (*prefix, i))
    return out


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    import copy

    doc = copy.deepcopy(draw(st.sampled_from(SEED_DOCS)))
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(paths_of(doc)))
        if not target:
            continue
        parent = doc
        for part in target[:-1]:
            parent = parent[part]
        key = target[-1]
        how = draw(st.sampled_from(["replace", "delete", "rename", "add"]))
        if how == "replace":
            parent[key] = draw(values)
        elif how == "delete":
            del parent[key]
        elif how == "rename" and isinstance(parent, dict):
            parent[str(key)[:-1] + draw(st.sampled_from(["", "x", "_", "s"]))] = parent.pop(key)
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return doc


def dump(doc: Any) -> str:
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(doc, stream)
    return stream.getvalue()


def check(diagnostics: list[Diagnostic]) -> None:
    for d in diagnostics:
        assert d.line >= 1 and d.col >= 1
        assert d.message
        assert "Traceback" not in d.render()


@settings(max_examples=400, deadline=None)
@given(
    text=st.sampled_from(SEEDS),
    cuts=st.lists(st.integers(0, 2000), max_size=4),
    junk=st.text(max_size=6),
)
def test_text_mutations_never_raise(text: str, cuts: list[int], junk: str) -> None:
    for cut in cuts:
        at = cut % (len(text) + 1)
        text = text[:at] + junk + text[at + len(junk) :]
    check(load_text(text, "specs/fuzz.yaml").diagnostics)


@settings(max_examples=400, deadline=None)
@given(doc=mutated_documents())
def test_structural_mutations_never_raise(doc: dict[str, Any]) -> None:
    check(load_text(dump(doc), "specs/fuzz.yaml").diagnostics)


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-repo")
    shutil.copytree(PROJECT_ROOT / "specs", root / "specs")
    shutil.copytree(PROJECT_ROOT / "data", root / "data")
    return root


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_documents(), index=st.integers(0, len(SEEDS) - 1))
def test_mutated_repository_resolves_or_diagnoses(
    demo_copy: Path, doc: dict[str, Any], index: int
) -> None:
    target = [p for p in DEMO_SPECS if "_presets" not in p.parts][index]
    relative = target.relative_to(PROJECT_ROOT)
    path = demo_copy / relative
    try:
        path.write_text(dump(doc), encoding="utf-8")
        loaded = load_desired(demo_copy)
        check(loaded.diagnostics)
        assert loaded.ok or loaded.diagnostics
    finally:
        path.write_text(target.read_text(encoding="utf-8"), encoding="utf-8")
