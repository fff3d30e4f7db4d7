"""Crash safety: apply and `pipeline run` killed at 25 points across pull, prepare, train,
evaluate, promote, deploy and the pipeline's steps, by fault points and by real SIGKILLs of
the whole process group or of the parent alone while its training child runs. After every
kill `llmops models verify` is clean; the next run converges (a second plan is a no-op),
loses nothing stored before a kill and trains each changed run once; a trainer orphaned by
a killed apply never writes beside the next one's. Two applies at once: one waits, no job
runs twice. Each test prints its figures (run with -s)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.state.lockfile import read_lock
from controller.state.paths import StatePaths
from controller.state.registry.store import Registry
from runners.deploy.local import free_port, is_serving_process
from runners.train import runlock
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.integration.test_apply import llmops
from tests.integration.test_pipeline import (  # noqa: F401  (loop is a fixture)
    chat,
    commit_lock,
    loop,
    run_pipeline,
)

MAX_STEPS = 40  # more steps than the apply tests: time to kill it mid-training
# Killed in this order in one repository; each run reuses what the kills before it left.
TRAIN_POINTS = [
    "before:Model/tiny",
    "after:Model/tiny",  # pulled and registered, not yet in the lock file
    "before:Dataset/faq",
    "after:Dataset/faq",  # prepared and tracked, not yet in the lock file
    "after:EvalSuite/smoke",
    "before:Experiment/exp/default",
    "sigkill-group-during-training",  # apply and its training process
    "sigkill-parent-during-training",  # apply alone: its child dies with it (PDEATHSIG)
    "after:Experiment/exp/default",  # trained and registered, not yet in the lock file
]
EVALUATE_POINTS = [
    "before:Evaluation/exp/control",  # everything before it applied in this first run
    "sigkill-group-during-evaluation",  # lm-eval in the apply process, mid-generation
    "after:Evaluation/exp/control",  # results stored, metrics recorded, lock not written
    "before:Model/assistant",
    "sigkill-parent-during-promotion",  # evaluating the candidate before moving the alias
    "after:Model/assistant",  # evaluated, gates passed, alias moved; lock not written
    "before:Evaluation/exp/default",
    "after:Evaluation/exp/default",
]
DEPLOY_POINTS = [
    "before:Deployment/assistant",
    "after:Deployment/assistant",  # serving and recorded in its state file, lock not written
]
PIPELINE_POINTS = [
    "after:pipeline/update_dataset",
    "sigkill-parent-during-retrain",  # the trainer outlives it: the next run stops it
    "after:pipeline/retrain",
    "after:pipeline/regression_test",
    "after:pipeline/open_pull_request",
]
_logs = itertools.count()


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    root = build_repo(tmp_path / "repo", tiny_model)
    spec = root / "specs/experiments/exp.yaml"
    spec.write_text(spec.read_text().replace("max_steps: 4", f"max_steps: {MAX_STEPS}"))
    return root


def artifacts(root: Path) -> set[str]:
    """What no kill may lose: registry versions with each file's digest, prepared dataset
    versions and stored evaluation results."""
    paths = StatePaths.for_repo(root)
    versions = [v for m in Registry.open(paths).models() for v in m.versions]
    found = {f"{v.model.name}@{v.number}:{f.path}:{f.sha256}" for v in versions for f in v.files}
    state = paths.root
    found |= {f"dataset:{p.parent.relative_to(state)}" for p in state.glob("data/*/*/stats.json")}
    found |= {f"eval:{p.parent.relative_to(state)}" for p in state.glob("evals/*/*/*/results.json")}
    return found


@dataclass
class Tally:
    """The kills of one test, and everything stored after each."""

    name: str
    root: Path
    kills: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)

    def killed(self, point: str, code: int) -> None:
        assert code in (137, -9), f"not killed at {point} (exit {code})"
        verify = llmops(self.root, "models", "verify")
        assert verify.returncode == 0, f"after the kill at {point}: {verify.stdout}{verify.stderr}"
        self.kills.append(point)
        self.seen |= artifacts(self.root)

    def converged(self) -> None:
        """A second plan changes nothing, nothing stored is lost; prints the figures."""
        plan = llmops(self.root, "plan", "--json")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert {a["action"] for a in json.loads(plan.stdout)["actions"]} <= {"noop"}
        assert llmops(self.root, "models", "verify").returncode == 0
        lost = sorted(self.seen - artifacts(self.root))
        assert lost == [], lost
        print(
            f"\ncrash points ({self.name}): {len(self.kills)} kills, converged (plan no-op, "
            f"models verify clean), lost artifacts {len(lost)}: {', '.join(self.kills)}"
        )


def start(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """llmops in its own process group, its output in a file beside the repository."""
    out = root.parent / f"llmops-{next(_logs)}.log"
    with out.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller.cli.main", *args],
            cwd=root,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    process.output = out  # type: ignore[attr-defined]
    return process


def output(process: subprocess.Popen) -> str:
    return process.output.read_text(errors="replace")  # type: ignore[attr-defined]


def wait_until(process: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"finished before {what}:\n{output(process)[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after 300 s:\n{output(process)[-3000:]}"
        time.sleep(0.1)


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in (root / ".llmops").glob("runs/*/*/*/job.json"))


def steps_logged(folders: list[Path]) -> int:
    logs = [folder / "log.jsonl" for folder in folders if (folder / "log.jsonl").is_file()]
    return sum(1 for log in logs for line in log.read_text().splitlines() if '"loss"' in line)


def words(text: str) -> str:
    """The text with every run of whitespace one space: the console wraps long lines."""
    return " ".join(text.split())


def trainer(root: Path) -> int | None:
    """The pid of the training process writing a run folder of this repository, if any."""
    for folder in run_folders(root):
        found = runlock.holder(folder)
        if found is not None and runlock.is_training_process(found.pid):
            return found.pid
    return None


def gone(pid: int, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while runlock.is_training_process(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_while(
    root: Path,
    args: tuple[str, ...],
    ready: Callable[[subprocess.Popen], bool],
    what: str,
    whole_group: bool,
    env: dict[str, str] | None = None,
) -> tuple[int, int | None]:
    """Start llmops, SIGKILL it (the process group, or the parent alone) once `ready`; the
    exit code and the training process that was running then, if one was."""
    process = start(root, *args, env=env)
    wait_until(process, lambda: ready(process), what)
    child = trainer(root)
    if whole_group:
        os.killpg(process.pid, signal.SIGKILL)
    else:
        os.kill(process.pid, signal.SIGKILL)
    return process.wait(), child


def training(root: Path, before: frozenset[Path] = frozenset()) -> bool:
    """A trainer has logged three steps into a run folder that is not one of `before`."""
    fresh = [folder for folder in run_folders(root) if folder not in before]
    return steps_logged(fresh) >= 3 and trainer(root) is not None


def printed(*texts: str) -> Callable[[subprocess.Popen], bool]:
    """The output holds each text, in this order."""

    def check(process: subprocess.Popen) -> bool:
        text, at = words(output(process)), 0
        for wanted in texts:
            at = text.find(wanted, at)
            if at < 0:
                return False
            at += len(wanted)
        return True

    return check


def one_writer_at_a_time(log: Path) -> list[dict]:
    """Steps follow each other, or restart after a `resumed` event at its checkpoint: two
    processes appending to one log would interleave their steps."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    job = json.loads((log.parent / "job.json").read_text())
    step = 0
    for record in records:
        if record.get("event") == "resumed":
            assert record["step"] <= step, records
            step = record["step"]
        elif "loss" in record:
            assert record["step"] == step + 1, f"two writers in {log}: {records}"
            step = record["step"]
    assert step == job["training"]["max_steps"], records
    return records


def test_killed_across_pull_prepare_and_training_converges(repo: Path) -> None:
    tally = Tally("pull, prepare, train", repo)
    for point in TRAIN_POINTS:
        if point == "sigkill-group-during-training":
            code, _ = kill_while(repo, ("apply",), lambda p: training(repo), point, True)
        elif point == "sigkill-parent-during-training":
            code, child = kill_while(repo, ("apply",), lambda p: training(repo), point, False)
            assert child is not None
            # Its apply is gone, so the kernel stops it (PR_SET_PDEATHSIG) before it finishes.
            assert gone(child), f"training process {child} outlived its apply"
            (folder,) = run_folders(repo)
            assert not (folder / "result.json").exists(), "the orphan trained to the end"
        else:
            code = llmops(repo, "apply", env={"LLMOPS_FAULT_KILL": point}).returncode
        tally.killed(point, code)

    final = llmops(repo, "apply", "--json")
    assert final.returncode == 0, final.stderr
    done = {r["address"]: r for r in json.loads(final.stdout)["results"]}
    # Only what the last kill interrupted is left; earlier work was reused.
    assert "Dataset/faq" not in done and "Model/tiny" not in done
    assert all(r["status"] in ("applied", "recorded") for r in done.values())
    (folder,) = run_folders(repo)  # one training run: resumed after each kill
    records = one_writer_at_a_time(folder / "log.jsonl")
    assert any(r.get("event") == "resumed" and r["step"] > 0 for r in records)
    assert json.loads(llmops(repo, "apply", "--json").stdout)["results"] == []
    models = json.loads(llmops(repo, "models", "list", "--json").stdout)
    assert sorted(m["ref"] for m in models) == ["assistant@1", "tiny@1"]
    tally.converged()


@pytest.mark.hardening
def test_killed_across_evaluation_and_promotion_converges(repo: Path) -> None:
    tally = Tally("evaluate, promote", repo)
    for point in EVALUATE_POINTS:
        if point == "sigkill-group-during-evaluation":
            ready = printed("create Evaluation/exp/control", "generate_until")
            code, _ = kill_while(repo, ("apply",), ready, point, True)
        elif point == "sigkill-parent-during-promotion":
            ready = printed("create Model/assistant", "generate_until")
            code, _ = kill_while(repo, ("apply",), ready, point, False)
        else:
            code = llmops(repo, "apply", env={"LLMOPS_FAULT_KILL": point}).returncode
        tally.killed(point, code)

    final = llmops(repo, "apply", "--json")
    assert final.returncode == 0, final.stderr
    done = {r["address"]: r for r in json.loads(final.stdout)["results"]}
    assert set(done) == {"Evaluation/exp/default"}  # the one the last kill left unrecorded
    lock = read_lock(repo / "llmops.lock").as_json()["resources"]
    assert lock["Model/assistant"]["outputs"]["version"] == "assistant@1"
    assert lock["Evaluation/exp/default"]["outputs"]["gates"]
    assert len(run_folders(repo)) == 1 and len(list(repo.glob(".llmops/runs/**/result.json"))) == 1
    models = json.loads(llmops(repo, "models", "list", "--json").stdout)
    assert sorted(m["ref"] for m in models) == ["assistant@1", "tiny@1"]
    assert next(m for m in models if m["name"] == "assistant")["aliases"] == ["champion"]
    tally.converged()


def test_an_orphaned_trainer_is_stopped_before_a_new_one_writes(repo: Path) -> None:
    """SIGKILL of apply alone where the kernel does not stop its child (no PDEATHSIG, as on
    a system without it): the trainer lives on, holding its run folder's lock, and the next
    apply stops it before its own trainer resumes the run."""
    tally = Tally("orphaned trainer", repo)
    point = "sigkill-parent-during-training (orphan left running)"
    process = start(repo, "apply", env={runlock.KEEP_ORPHAN_ENV: "1"})
    wait_until(process, lambda: training(repo), "training")
    orphan = trainer(repo)
    assert orphan is not None
    os.kill(process.pid, signal.SIGKILL)
    # Held stopped so it is surely still there when the next apply looks, however fast this
    # machine trains; the apply continues it (SIGCONT) with its SIGTERM.
    os.kill(orphan, signal.SIGSTOP)
    tally.killed(point, process.wait())
    assert runlock.is_training_process(orphan), "the orphan should outlive its apply here"
    assert runlock.parent_of(orphan) != process.pid

    final = llmops(repo, "apply", "--json")
    assert final.returncode == 0, final.stdout[-2000:] + final.stderr[-3000:]
    said = words(final.stderr)
    assert f"stopping training process pid {orphan} " in said, said[-3000:]
    assert "the apply that started it was killed, and it still writes" in said
    assert gone(orphan, timeout_s=1), f"orphan {orphan} still runs beside the new trainer"
    (folder,) = run_folders(repo)
    records = one_writer_at_a_time(folder / "log.jsonl")
    assert [r["event"] for r in records if "event" in r] == ["resumed"]
    holder = runlock.holder(folder)
    assert holder is not None and holder.pid not in (orphan, process.pid)  # the new trainer
    assert len(list(repo.glob(".llmops/runs/**/result.json"))) == 1
    assert json.loads(llmops(repo, "apply", "--json").stdout)["results"] == []
    tally.converged()


@pytest.fixture
def deploy_repo(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, int]:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, "sk-test-0123456789")
    monkeypatch.setenv("LLMOPS_PORT_CLAIMS", str(tmp_path / "claims"))
    port = free_port()
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=port)
    yield root, port
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def serving_processes(root: Path) -> list[int]:
    """Serving runtimes started for this repository's deployments."""
    mine = str(root / ".llmops/deployments").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and is_serving_process(int(proc.name)):
            try:
                if mine in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.mark.hardening
def test_killed_around_a_local_deployment_converges_to_one_server(
    deploy_repo: tuple[Path, int],
) -> None:
    root, port = deploy_repo
    tally = Tally("deploy", root)
    for point in DEPLOY_POINTS:
        tally.killed(point, llmops(root, "apply", env={"LLMOPS_FAULT_KILL": point}).returncode)
    final = llmops(root, "apply", "--json")
    assert final.returncode == 0, final.stderr[-3000:]
    done = {r["address"]: r for r in json.loads(final.stdout)["results"]}
    assert done["Deployment/assistant"]["status"] in ("applied", "recorded")
    assert done["Deployment/assistant"]["outputs"]["version"] == "assistant@1"
    assert done["Deployment/assistant"]["outputs"]["endpoint"] == f"http://127.0.0.1:{port}/v1"
    assert len(serving_processes(root)) == 1  # the kill left no second server behind
    status = json.loads(llmops(root, "status", "--json").stdout)
    (row,) = [r for r in status["resources"] if r["address"] == "Deployment/assistant"]
    assert row["live"]["ready"] and row["live"]["version"] == "assistant@1"
    assert len(list(root.glob(".llmops/runs/**/result.json"))) == 1
    tally.converged()


@pytest.mark.hardening
def test_pipeline_killed_at_each_step_converges_to_one_pull_request_and_one_training(
    loop: dict,  # noqa: F811
) -> None:
    """A sweep over the pipeline's steps (`make hardening`, as the other sweeps here): in
    `make test`, test_killed_across_pull_prepare_and_training_converges kills apply across
    its own steps."""
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    spec = root / "specs/experiments/exp.yaml"  # time to kill the retraining mid-way
    spec.write_text(spec.read_text().replace("max_steps: 4", f"max_steps: {MAX_STEPS}"))
    git(root, "commit", "-qam", "longer training")
    git(root, "push", "-q", "origin", "main")
    assert llmops(root, "apply").returncode == 0
    commit_lock(root)
    chat(port, 60)
    tally = Tally("pipeline", root)
    env = loop["env"]
    for point in PIPELINE_POINTS:
        args = ("pipeline", "run", "retrain")
        if point == "sigkill-parent-during-retrain":
            base = frozenset(run_folders(root))  # the retraining writes a new run folder
            orphan_env = {**env, runlock.KEEP_ORPHAN_ENV: "1"}
            code, orphan = kill_while(
                root, args, lambda _, seen=base: training(root, seen), point, False, orphan_env
            )
            assert orphan is not None
            os.kill(orphan, signal.SIGSTOP)  # still there when the next run looks
            tally.killed(point, code)
            continue
        killed = llmops(root, *args, env={**env, "LLMOPS_FAULT_KILL": point})
        if point == "after:pipeline/retrain":
            # The run after the orphan's stops it before its own trainer resumes the run.
            said = words(killed.stdout + killed.stderr)
            assert f"stopping training process pid {orphan} " in said, said[-3000:]
            assert gone(orphan, timeout_s=1)
        tally.killed(point, killed.returncode)
        status = json.loads(llmops(root, "pipeline", "status", "retrain", "--json").stdout)
        assert point.removeprefix("after:pipeline/") in status["current"]["steps"], status
    record = run_pipeline(loop)
    assert record["status"] == "succeeded", record
    assert len(fake.pull_requests) == 1
    runs = run_folders(root)
    # One run folder for the base training, one for the retrain on the new data.
    assert len(runs) == 2, runs
    for folder in runs:
        one_writer_at_a_time(folder / "log.jsonl")
    again = run_pipeline(loop)
    assert again["status"] == "skipped"
    lost = sorted(tally.seen - artifacts(root))
    assert lost == [], lost
    assert llmops(root, "models", "verify").returncode == 0
    print(
        f"\ncrash points (pipeline): {len(tally.kills)} kills, converged (one pull request, "
        f"one retraining), lost artifacts {len(lost)}: {', '.join(tally.kills)}"
    )


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
