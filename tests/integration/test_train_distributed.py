"""Distributed training on the tiny Llama: two torchrun ranks (gloo on CPU) log the losses of
one process with the same global batch; a killed rank fails the run naming it, and the next
apply resumes from the last checkpoint to the same final loss; a checkpoint written by one
process resumes on two FSDP ranks, and (hardening) one FSDP ranks wrote resumes on one process.

Tolerance: the ranks sum their halves of a batch's token losses and DDP averages their
gradients, so the same numbers are added in another order than one process adds them. In
float32 (24-bit mantissa) that moves a loss near 6 by about 1e-7 relative (measured: at most
2e-7 over these steps); rtol 1e-5 leaves room for that and still fails a rank that trained on
other examples or a wrong loss scale (both move the loss by 1e-3 or more)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.apply.train import TrainFailed
from controller.workspace import make_plan
from runners.train.distributed import FAULT_RANK_ENV
from runners.train.log import LOG_FILE, read_log
from runners.train.loop import FAULT_ENV
from tests.conftest import PROJECT_ROOT
from tests.integration.test_train_controller import repo, trainer  # noqa: F401  (fixture)

RTOL = 1e-5


def git_commit(root: Path) -> None:
    for args in (
        ["add", "-A"],
        ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "y"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def steps(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {r["step"]: r for r in read_log(run_dir / LOG_FILE) if "loss" in r}


def run_runner(job_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runners.train", str(job_file)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(job_file.parent), **env},
        timeout=600,
    )


def job_copy(job_file: Path, out: Path, nproc: int, **training: Any) -> Path:
    """The same job (model, data, options) writing `out`, on `nproc` processes."""
    job = json.loads(job_file.read_text())
    job["output"] = str(out)
    job["training"]["distributed"] = {"nproc_per_node": nproc}
    job["training"].update(training)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_text(json.dumps(job))
    return out / "job.json"


def assert_same_losses(got: dict[int, dict[str, Any]], want: dict[int, dict[str, Any]]) -> float:
    """Every step's loss (and eval loss) within RTOL; returns the largest relative gap."""
    assert sorted(got) == sorted(want)
    worst = 0.0
    for step, record in want.items():
        for key in ("loss", "eval_loss"):
            if key in record:
                assert math.isclose(got[step][key], record[key], rel_tol=RTOL), (step, key)
                worst = max(worst, abs(got[step][key] - record[key]) / abs(record[key]))
    return worst


def test_two_ranks_log_one_process_losses_and_a_killed_rank_resumes(
    repo: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(
        spec.read_text().replace(
            "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}",
            # No dropout: its masks are drawn per process, the one thing ranks cannot share.
            "lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}\n"
            "    distributed: {nproc_per_node: 2, strategy: ddp}",
        )
    )
    git_commit(repo)
    # Rank 1 is killed (SIGKILL) after step 3; the last checkpoint is step 2's.
    monkeypatch.setenv(FAULT_ENV, "3")
    monkeypatch.setenv(FAULT_RANK_ENV, "1")
    with pytest.raises(TrainFailed) as failed:
        trainer(repo).train("exp", "default")
    message = str(failed.value)
    assert "exp/default:" in message and "rank 1 of 2" in message
    assert "killed by SIGKILL" in message and "resume from the last checkpoint" in message
    (run_dir,) = (repo / ".llmops/runs/exp/default").iterdir()
    assert sorted(steps(run_dir)) == [1, 2, 3]
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000002"]

    monkeypatch.delenv(FAULT_ENV)
    monkeypatch.delenv(FAULT_RANK_ENV)
    outcome = trainer(repo).train("exp", "default")
    assert outcome.status == "trained" and outcome.run_dir == run_dir
    assert {"event": "resumed", "step": 2} in read_log(run_dir / LOG_FILE)

    # One process, the same job and global batch, never interrupted.
    reference = job_copy(run_dir / "job.json", repo.parent / "one", nproc=1)
    done = run_runner(reference)
    assert done.returncode == 0, done.stderr[-2000:]
    want = steps(reference.parent)
    gap = assert_same_losses(steps(run_dir), want)
    final = json.loads((run_dir / "result.json").read_text())["final_loss"]
    assert math.isclose(final, want[max(want)]["loss"], rel_tol=RTOL)
    print(f"2 ranks vs 1 process: largest relative loss gap {gap:.2e}")

    # The world size is how a run runs, not what it trains: another one plans no retraining.
    spec.write_text(
        spec.read_text().replace("nproc_per_node: 2, strategy: ddp", "nproc_per_node: 1")
    )
    git_commit(repo)
    _, plan = make_plan(repo)
    runs = {a.address: a.kind.value for a in plan.actions if a.resource_kind == "Experiment"}
    assert runs["Experiment/exp/default"] == "noop"

    # A checkpoint one process wrote resumes on two FSDP ranks (weights and optimiser state
    # sharded as they load), to the same losses.
    other = job_copy(run_dir / "job.json", repo.parent / "one-then-fsdp", nproc=1)
    killed = run_runner(other, **{FAULT_ENV: "3"})
    assert killed.returncode == 137
    job_copy(other, other.parent, nproc=2)
    fsdp = json.loads(other.read_text())
    fsdp["training"]["distributed"]["strategy"] = "fsdp"
    other.write_text(json.dumps(fsdp))
    resumed = run_runner(other)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {"event": "resumed", "step": 2} in read_log(other.parent / LOG_FILE)
    assert_same_losses(steps(other.parent), want)


@pytest.mark.hardening
def test_fsdp_checkpoints_resume_on_one_process_and_back(
    repo: Path,  # noqa: F811
) -> None:
    """FSDP ranks gather their shards into one checkpoint, which one process resumes; its
    checkpoint resumes on FSDP ranks again; every step's loss is the uninterrupted one's."""
    spec = repo / "specs/experiments/exp.yaml"
    spec.write_text(
        spec.read_text().replace(
            "target_modules: [q_proj, v_proj]}", "dropout: 0.0, target_modules: [q_proj, v_proj]}"
        )
    )
    git_commit(repo)
    outcome = trainer(repo).train("exp", "default")
    want = steps(outcome.run_dir)
    chain = repo.parent / "chain"
    fsdp = {"nproc_per_node": 2, "strategy": "fsdp"}
    job_file = job_copy(outcome.run_dir / "job.json", chain, 2, checkpoint_interval=1)
    for distributed, fault in ((fsdp, "1"), ({"nproc_per_node": 1}, "2"), (fsdp, "")):
        job = json.loads(job_file.read_text())
        job["training"]["distributed"] = distributed
        job_file.write_text(json.dumps(job))
        done = run_runner(job_file, **({FAULT_ENV: fault} if fault else {}))
        assert done.returncode == (0 if not fault else (5 if distributed is fsdp else 137))
    resumed = [r["step"] for r in read_log(chain / LOG_FILE) if r.get("event") == "resumed"]
    assert resumed == [1, 2]
    assert_same_losses(steps(chain), want)
