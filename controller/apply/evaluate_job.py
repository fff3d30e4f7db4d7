"""Apply, evaluation on Kubernetes: an Evaluation's suite run by the evaluate runner in a
batch/v1 Job, over the state volume's claim or over the S3 store (LLMOPS_STORE, the Secret
`llmops-store`), its results folder collected as an in-process evaluation writes it.

The job folder (`<results folder>.job/`: job.json, pod-inputs.json, the suite's task data)
lies beside the results folder, so the results hold only what the runner writes there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.apply.store_job import StagingFailed, collect, stage, store_backed
from controller.state.artifacts.base import ArtifactStore, StoreError
from runners.evaluate.job import EvalJob
from runners.evaluate.run import EvalError
from runners.weights import adapter_base

RESULT = "result.json"  # runners/evaluate/__main__.py: how the runner ended
PATH_FIELDS = ("task_data", "model", "output", "judge_model")
INPUT_FIELDS = ("task_data", "model", "judge_model")


def job_folder(results: Path) -> Path:
    """Where an evaluation's Job files lie: beside its results folder."""
    return results.with_name(f"{results.name}.job")


def job_key(state_root: Path, results: Path) -> str:
    """Tells one evaluation's Job from another's: its results folder (suite digest, code
    digest, model version, namespace) hashed."""
    relative = results.resolve().relative_to(state_root.resolve()).as_posix()
    return hashlib.sha256(relative.encode()).hexdigest()


def write_job(
    suite_name: str,
    suite: dict[str, Any],
    task_data: dict[str, Path],
    model: Path,
    results: Path,
    judge: Path | None,
    meta: dict[str, Any],
) -> EvalJob:
    """The job with every input inside the state folder: the suite's task data (repository
    files or prepared splits) copied into the job folder, so a pod finds them there."""
    data = job_folder(results) / "data"
    data.mkdir(parents=True, exist_ok=True)
    copies: dict[str, str] = {}
    for task, path in sorted(task_data.items()):
        copy = data / f"{task}.jsonl"
        shutil.copyfile(path, copy)
        copies[task] = str(copy)
    return EvalJob(
        suite_name=suite_name,
        suite=suite,
        task_data=copies,
        model=str(model),
        output=str(results),
        judge_model=str(judge) if judge else None,
        meta=meta,
    )


def in_volume(job: EvalJob, state_root: Path, mount: str) -> EvalJob:
    """The job as a pod that mounts the state folder's claim at `mount` sees it."""
    from controller.apply import kubernetes_job as k8s

    try:
        return EvalJob(**k8s.rewrite_paths(asdict(job), state_root, mount, PATH_FIELDS))
    except k8s.OutsideVolume as err:
        raise EvalError(f"the evaluation's input {err}") from None


def bases(job: EvalJob) -> tuple[str, ...]:
    """The base model folders of the job's adapters (model, judge): no field names them, the
    adapter's config does (`../../<base>/<number>`), so the pod needs them staged too."""
    found = []
    for folder in (job.model, job.judge_model):
        base = adapter_base(folder) if folder else None
        if base is not None:
            found.append(str(base))
    return tuple(found)


def run_job(
    job: EvalJob,
    ref: str,
    executor: dict[str, Any],
    state_root: Path,
    store: ArtifactStore | None,
    say: Any = print,
) -> dict[str, Any]:
    """Submit the evaluation as a Job, wait, collect its results folder; the summary the
    runner wrote (results.json), as `runners.evaluate.run.evaluate` returns it. An
    EvalError names the Job and why it failed."""
    from controller.apply import kubernetes_job as k8s

    results = Path(job.output)
    folder = job_folder(results)
    folder.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    (results / RESULT).unlink(missing_ok=True)
    over_store = store_backed() and store is not None
    where = f"suite {job.suite_name} on {ref}"
    if over_store:
        assert store is not None
        try:
            stage(
                store,
                state_root,
                folder / "job.json",
                asdict(job),
                paths=PATH_FIELDS,
                inputs=INPUT_FIELDS,
                output=str(results),
                extra=bases(job),
            )
        except (StagingFailed, StoreError) as err:
            raise EvalError(f"{where}: {err}") from err
    else:
        mount = executor.get("state_mount_path", "/llmops")
        in_volume(job, state_root, mount).save(folder / "job.json")
    manifest = k8s.render_eval_job(
        folder / "job.json",
        job.suite_name,
        ref,
        job_key(state_root, results),
        executor,
        state_root,
        k8s.STORE_SECRET if over_store else None,
    )
    namespace, name = manifest.metadata.namespace, manifest.metadata.name
    try:
        api = k8s.api_client(os.environ.get("LLMOPS_KUBERNETES_API"))
        how = k8s.submit(api, manifest)
        say(f"Job {namespace}/{name} {how}; waiting for it")
        status = k8s.wait(api, namespace, name, float(executor.get("timeout_s", 86400)))
    except k8s.JobFailed as err:
        raise EvalError(f"{where}: {err}") from err
    if over_store:
        assert store is not None
        try:
            collect(store, state_root, results)
        except StoreError as err:
            raise EvalError(f"{where}: Job {name} ended; its results: {err}") from err
    ended = results / RESULT
    result = json.loads(ended.read_text()) if ended.is_file() else {}
    summary = results / "results.json"
    if status.succeeded and result.get("status") == "succeeded" and summary.is_file():
        out: dict[str, Any] = json.loads(summary.read_text())
        return out
    reason = result.get("message") or status.message or f"no {RESULT} in {results}"
    raise EvalError(
        f"{where}: Job {namespace}/{name} failed: {reason}; its output: 'kubectl -n "
        f"{namespace} logs job/{name}'; delete the Job to run it again"
    )
