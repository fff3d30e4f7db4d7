"""Brain scans through apply and `llmops inspect` on the tiny repository: an experiment that
asks for a scan gets one without retraining, the scan is stored and reused, the PR report
shows it, and a damaged copy raises an alarm naming its layer and module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.state.lockfile import ExperimentOutputs, read_lock
from tests.apply_repo import build_repo, git
from tests.tiny import model_spec


def llmops(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        os.environ.pop(name, None)
    root = build_repo(tmp_path_factory.mktemp("inspect") / "repo", tiny_model)
    done = llmops(root, "apply")
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_asking_for_a_scan_scans_the_trained_version_without_retraining(repo: Path) -> None:
    runs_before = sorted((repo / ".llmops").glob("runs/**/result.json"))
    spec = repo / "specs/experiments/exp.yaml"
    (repo / "data/probes.txt").write_text("How do I reset my password?\nCan I export my data?\n")
    spec.write_text(spec.read_text() + "  inspect: {probes: data/probes.txt, top_k: 3}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "scan the fine-tune")
    plan = json.loads(llmops(repo, "plan", "--json").stdout)
    pending = {a["address"]: a for a in plan["actions"] if a["action"] != "noop"}
    assert "brain scan not recorded yet" in pending["Experiment/exp/default"]["reason"]
    done = llmops(repo, "apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted((repo / ".llmops").glob("runs/**/result.json")) == runs_before
    outputs = read_lock(repo / "llmops.lock").get("Experiment/exp/default").outputs
    assert isinstance(outputs, ExperimentOutputs) and outputs.scan is not None
    # LoRA on q_proj and v_proj, merged: nothing else moved.
    assert outputs.scan.modules_changed == ["q_proj", "v_proj"]
    assert outputs.scan.against == "tiny@1"
    assert not [a for a in outputs.scan.alarms if a.startswith("error")]
    again = json.loads(llmops(repo, "plan", "--json").stdout)
    assert all(a["action"] == "noop" for a in again["actions"]), again["actions"]
    report = llmops(repo, "report", "--base", "HEAD~1", "--output", "report.md")
    assert report.returncode == 0, report.stderr
    text = (repo / "report.md").read_text()
    assert "### Brain scans" in text and "q_proj, v_proj" in text
    check_inspect_reads_the_stored_scan_and_draws_it(repo)


def check_inspect_reads_the_stored_scan_and_draws_it(repo: Path) -> None:
    done = llmops(repo, "inspect", "assistant@1", "--probes", "data/probes.txt", "--top-k", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(cached" in done.stdout and "modules changed: q_proj, v_proj" in done.stdout
    # What changed leads (modules, layers, neurons against the base on the probes), then alarms.
    out = done.stdout
    assert "neurons whose activation changed most" in out
    alarms_at = out.find("alarm(s)") if "alarm(s)" in out else out.index("no alarms")
    assert out.index("what changed") < out.index("layers that changed most") < alarms_at
    scan = json.loads(
        llmops(
            repo, "inspect", "assistant@1", "--probes", "data/probes.txt", "--top-k", "3", "--json"
        ).stdout
    )
    folder = Path(scan["folder"])
    for image in scan["images"].values():
        assert (folder / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scan["activations"] is not None and scan["deltas"]


def test_a_damaged_copy_raises_an_alarm_naming_layer_and_module(
    repo: Path, tiny_model: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(50.0)
    model.save_pretrained(repo / "models/damaged")
    for path in tiny_model.iterdir():
        if "token" in path.name:
            (repo / "models/damaged" / path.name).write_bytes(path.read_bytes())
    (repo / "specs/models/damaged.yaml").write_text(
        model_spec("damaged", {"type": "local", "path": "models/damaged"})
    )
    assert llmops(repo, "models", "pull", "damaged").returncode == 0
    done = llmops(repo, "inspect", "damaged", "--against", "tiny", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    scan = json.loads(done.stdout)
    errors = [a for a in scan["alarms"] if a["severity"] == "error"]
    assert errors and all(a["layer"] == 1 and a["module"] == "up_proj" for a in errors), errors
