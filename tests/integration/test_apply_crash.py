"""Crash safety: apply killed at many points converges on the next run, and the registry
verifies after every kill. Two applies at once: one waits, no job runs twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.state.lockfile import read_lock
from tests.apply_repo import build_repo
from tests.integration.test_apply import llmops

# Each apply is killed at the next point; everything before it must be reused, not redone.
KILL_POINTS = [
    "after:Model/tiny",  # pulled and registered, not yet in the lock file
    "after:Dataset/faq",  # prepared and tracked, not yet in the lock file
    "sigkill-during-training",  # a real SIGKILL of apply and its training process
    "after:Experiment/exp/default",  # trained and registered, not yet in the lock file
    "after:Evaluation/exp/control",  # results stored, metrics recorded, lock not written
    "after:Model/assistant",  # evaluated, gates passed, alias moved; lock not written
    "before:Evaluation/exp/default",  # between two actions
]


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    root = build_repo(tmp_path / "repo", tiny_model)
    spec = root / "specs/experiments/exp.yaml"  # more steps: time to kill it mid-training
    spec.write_text(spec.read_text().replace("max_steps: 4", "max_steps: 40"))
    return root


def kill_during_training(root: Path) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "apply"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        logs = list((root / ".llmops").glob("runs/**/log.jsonl"))
        steps = [line for log in logs for line in log.read_text().splitlines() if '"step"' in line]
        if len(steps) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "apply finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def test_apply_killed_at_seven_points_converges_and_registry_verifies(repo: Path) -> None:
    for point in KILL_POINTS:
        if point == "sigkill-during-training":
            code = kill_during_training(repo)
        else:
            code = llmops(repo, "apply", env={"LLMOPS_FAULT_KILL": point}).returncode
        assert code in (137, -9), f"apply was not killed at {point} (exit {code})"
        verify = llmops(repo, "models", "verify")
        assert verify.returncode == 0, f"after kill at {point}: {verify.stdout}{verify.stderr}"

    final = llmops(repo, "apply", "--json")
    assert final.returncode == 0, final.stderr
    done = {r["address"]: r for r in json.loads(final.stdout)["results"]}
    # Only what the last kill interrupted is left; earlier work was reused.
    assert "Dataset/faq" not in done and "Model/tiny" not in done
    assert all(r["status"] in ("applied", "recorded") for r in done.values())
    runs = list((repo / ".llmops").glob("runs/**/result.json"))
    assert len(runs) == 1  # one training run: resumed after the kill, never started over
    events = [json.loads(line) for line in (runs[0].parent / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resumed" and e["step"] > 0 for e in events)

    again = llmops(repo, "apply", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["results"] == []
    plan = llmops(repo, "plan", "--json")
    assert plan.returncode == 0
    assert {a["action"] for a in json.loads(plan.stdout)["actions"]} <= {"noop"}
    lock = read_lock(repo / "llmops.lock").as_json()["resources"]
    assert lock["Model/assistant"]["outputs"]["version"] == "assistant@1"
    models = json.loads(llmops(repo, "models", "list", "--json").stdout)
    assert sorted(m["name"] for m in models) == ["assistant", "tiny"]
    assert llmops(repo, "models", "verify").returncode == 0


def test_two_concurrent_applies_one_waits_and_no_job_runs_twice(repo: Path) -> None:
    env = {**os.environ}
    first = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "apply", "--json"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    holder = repo / ".llmops/apply.lock.json"
    deadline = time.monotonic() + 120
    while not holder.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holder.exists(), "the first apply never took the lock"

    busy = llmops(repo, "apply", "--no-wait")
    assert busy.returncode == 4
    assert "another apply is running (pid" in busy.stderr

    second = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "apply", "--json"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "waiting for another apply to finish" in err2
    recorded = read_lock(repo / "llmops.lock").resources
    assert len(json.loads(out1)["results"]) == len(recorded)
    assert json.loads(out2)["results"] == []  # planned after the first finished: nothing left
    assert len(list((repo / ".llmops").glob("runs/**/result.json"))) == 1
