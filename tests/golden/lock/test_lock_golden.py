"""Golden lock files: the one reader/writer reproduces them byte for byte, migrates older
schema versions and refuses what it cannot read with a located message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from controller.state.lockfile import (
    LOCK_VERSION,
    EvaluationOutputs,
    LockFileError,
    parse_lock,
    read_lock,
    render_lock,
    write_lock,
)

HERE = Path(__file__).parent
CURRENT = HERE / f"v{LOCK_VERSION}.lock"


def test_older_version_is_migrated_to_the_current_one() -> None:
    migrated = render_lock(parse_lock((HERE / "v1.lock").read_text(), "v1.lock"))
    if os.environ.get("UPDATE_GOLDEN"):
        CURRENT.write_text(migrated)
    assert migrated == CURRENT.read_text()
    lock = parse_lock(migrated)
    evaluation = lock.outputs("Evaluation/support-lora/default")
    assert isinstance(evaluation, EvaluationOutputs)
    gate = evaluation.gates["faq-answers/rouge_l max_drop"]
    assert gate.passed and gate.detail == "change +0.047 (drop -0.047) vs allowed 0.02"
    assert "gate_details" not in migrated


def test_read_then_write_reproduces_the_current_version_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "llmops.lock"
    write_lock(path, read_lock(CURRENT))
    assert path.read_bytes() == CURRENT.read_bytes()
    assert json.loads(path.read_text())["lockVersion"] == LOCK_VERSION


def test_a_lock_from_a_newer_llmops_is_refused_with_what_to_do() -> None:
    text = CURRENT.read_text().replace(f'"lockVersion": {LOCK_VERSION}', '"lockVersion": 99')
    with pytest.raises(LockFileError) as caught:
        parse_lock(text, "llmops.lock")
    shown = caught.value.diagnostic.render()
    assert shown.startswith("llmops.lock:2:1: error: lockVersion:")
    assert "lockVersion 99 was written by a newer llmops" in shown
    assert "upgrade llmops" in shown


@pytest.mark.parametrize("version", ["0", '"2"', "null", "true"])
def test_a_version_that_is_not_one_is_refused(version: str) -> None:
    current = f'"lockVersion": {LOCK_VERSION}'
    text = CURRENT.read_text().replace(current, f'"lockVersion": {version}')
    with pytest.raises(LockFileError, match="unknown lockVersion"):
        parse_lock(text)


def test_an_entry_that_does_not_fit_its_kind_is_located() -> None:
    text = CURRENT.read_text().replace('"tasks": 3', '"tasks": "three"')
    with pytest.raises(LockFileError) as caught:
        parse_lock(text, "llmops.lock")
    diagnostic = caught.value.diagnostic
    assert diagnostic.path == "resources.EvalSuite/support-regression.outputs.tasks"
    assert (
        CURRENT.read_text()
        .splitlines()[diagnostic.line - 1]
        .strip()
        .startswith('"EvalSuite/support-regression"')
    )


def test_an_unknown_output_field_or_a_bad_address_is_refused() -> None:
    data = json.loads(CURRENT.read_text())
    data["resources"]["Model/support-assistant"]["outputs"]["surprise"] = 1
    with pytest.raises(LockFileError, match="Extra inputs are not permitted"):
        parse_lock(json.dumps(data))
    data = json.loads(CURRENT.read_text())
    data["resources"]["Model/a/b"] = data["resources"].pop("Model/support-assistant")
    with pytest.raises(LockFileError, match="Model/<name>"):
        parse_lock(json.dumps(data))
