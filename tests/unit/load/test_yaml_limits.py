"""Hostile spec files fail fast with a located diagnostic: alias bombs, depth, size, documents."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from controller.load.loader import load_specs, load_text
from controller.load.yaml_source import YamlLimits, flow_depth_position, parse_documents


def alias_bomb(levels: int = 9) -> str:
    lines = ["apiVersion: llmops/v1", "kind: Model", "metadata: {name: bomb}", "x0: &a0 [lol]"]
    for level in range(1, levels + 1):
        lines.append(f"x{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    lines.append(f"spec: {{source: {{type: local, path: *a{levels}}}}}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_fails_fast_and_small_at_the_alias():
    text = alias_bomb()
    assert len(text) < 1024
    tracemalloc.start()
    start = time.perf_counter()
    documents, diagnostics = parse_documents(text, "specs/models/bomb.yaml")
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert documents == []
    [diag] = diagnostics
    assert seconds < 2 and peak < 50 * 1024 * 1024
    assert diag.file == "specs/models/bomb.yaml" and diag.line > 4
    assert "aliases expand" in diag.message and "alias bomb" in diag.hint


def test_a_few_ordinary_aliases_are_fine():
    text = (
        "apiVersion: llmops/v1\nkind: Model\nmetadata: {name: m, labels: &l {team: a}}\n"
        "spec: {source: {type: local, path: models/m}}\nx: *l\n"
    )
    documents, diagnostics = parse_documents(text, "f.yaml")
    assert diagnostics == [] and documents[0].data["x"] == {"team": "a"}


def test_merge_keys_count_as_aliases():
    limits = YamlLimits(max_alias_nodes=20)
    base = "b: &b {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n"
    text = base + "".join(f"c{i}: {{<<: *b}}\n" for i in range(3))
    _, diagnostics = parse_documents(text, "f.yaml", limits)
    assert diagnostics and "aliases expand" in diagnostics[0].message


def test_recursive_alias_is_a_located_error():
    _, diagnostics = parse_documents("a: &x [1, *x]\n", "f.yaml")
    [diag] = diagnostics
    assert (diag.line, "cycle" in diag.message) == (1, True)


@pytest.mark.parametrize("flow", [True, False])
def test_deep_nesting_is_refused_quickly(flow):
    if flow:
        text = "spec: " + "[" * 5000 + "]" * 5000 + "\n"
    else:
        text = "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(200))
    start = time.perf_counter()
    documents, diagnostics = parse_documents(text, "f.yaml")
    assert time.perf_counter() - start < 2
    assert documents == [] and "nesting deeper than 64" in diagnostics[0].message
    assert diagnostics[0].line > (0 if flow else 60)


def test_brackets_in_quotes_and_comments_do_not_count():
    text = 'a: "' + "[" * 100 + '"\nb: [x, {y: [1]}]  # ' + "{" * 100 + "\nc: '" + "[" * 80 + "'\n"
    assert flow_depth_position(text, 64) is None
    documents, diagnostics = parse_documents(text, "f.yaml")
    assert diagnostics == [] and documents[0].data["b"] == ["x", {"y": [1]}]


def test_scalar_and_document_count_limits():
    _, diagnostics = parse_documents("a: " + "x" * 300_000 + "\n", "f.yaml")
    assert "scalar of 300,000 characters" in diagnostics[0].message
    _, diagnostics = parse_documents("---\n{}\n" * 1001, "f.yaml")
    assert "more than 1000 YAML documents" in diagnostics[0].message
    assert diagnostics[0].line == 2001


def test_huge_file_is_refused_before_reading(tmp_path: Path):
    (tmp_path / "specs/models").mkdir(parents=True)
    big = tmp_path / "specs/models/big.yaml"
    with big.open("w") as out:
        out.write("a: ")
        out.truncate(8 * 1024 * 1024)  # sparse: 8 MB without writing them
    result = load_specs(tmp_path)
    [diag] = result.diagnostics
    assert diag.file == "specs/models/big.yaml" and diag.line == 1
    assert "8,388,608 bytes" in diag.message and diag.hint


def test_limits_reach_load_text():
    result = load_text(alias_bomb(), "specs/models/bomb.yaml")
    assert result.specs == [] and "aliases expand" in result.diagnostics[0].message
