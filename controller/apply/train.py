"""Apply, training: an Experiment run -> a trained model version with lineage and curves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from controller.api import split_ref
from controller.api.dataset import DatasetSpec
from controller.api.experiment import ExperimentSpec
from controller.apply.context import ApplyStep
from controller.apply.prepare import Preparer
from controller.apply.pull import ensure_model
from controller.apply.store_job import StagingFailed, collect, stage, store_backed
from controller.plan.types import DesiredResource
from controller.report.model_card import render_card
from controller.state.artifacts.base import StoreError
from controller.state.artifacts.tree import pull_folder, push_folder
from controller.state.blobs import Blob
from controller.state.git import head_commit
from controller.state.paths import StatePaths
from controller.state.provenance import UNTRUSTED_NAMESPACE
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import NewVersion
from runners.deploy import environment
from runners.errors import LlmopsError
from runners.pull.metadata import inspect_folder
from runners.train import TrainJob, runlock
from runners.train.curves import plot_runs
from runners.train.log import LOG_FILE, LogError, first_last_eval, read_log, training_steps

TRAINING_FILES = (LOG_FILE, "curves.png", "result.json", "job.json")
STOP_GRACE_S = 30.0  # an orphaned trainer's time to die on SIGTERM before SIGKILL


class TrainFailed(LlmopsError):
    """The run did not produce a model; the message says why and what to do."""


@dataclass
class TrainOutcome:
    status: Literal["cached", "trained"]
    run: str
    version: VersionRow
    result: dict[str, Any]
    run_dir: Path

    @property
    def ref(self) -> str:
        return f"{self.version.model.name}@{self.version.number}"


def run_folder(paths: StatePaths, resource: DesiredResource, trusted: bool = True) -> Path:
    """Where a run trains and keeps its log, curves, checkpoints and result: keyed by the
    run's digest, apart for untrusted refs so a trusted run never resumes from their
    checkpoints."""
    experiment, run = resource.address.experiment, str(resource.address.run)
    digest = resource.digest.removeprefix("sha256:")[:16]
    return paths.runs(experiment) / run / (digest if trusted else f"{digest}.{UNTRUSTED_NAMESPACE}")


class Trainer(ApplyStep):
    """Trains the runs of experiments of one loaded repository."""

    def runs(self, experiment: str) -> list[str]:
        return [r.name for r in self.loaded.runs.get(experiment, [])]

    def run_dir(self, resource: DesiredResource) -> Path:
        return run_folder(self.registry.paths, resource, self.trust is None or self.trust.trusted)

    def train(self, experiment: str, run: str, force: bool = False) -> TrainOutcome:
        resource = self.desired.resources[f"Experiment/{experiment}/{run}"]
        spec = resource.spec_as(ExperimentSpec)
        name = spec.register_as or experiment
        run_dir = self.run_dir(resource)
        if not force and (cached := self._cached(name, resource, run, run_dir)) is not None:
            return cached
        family, base_path = ensure_model(
            spec.base_model,
            dict(self.desired.resources),
            self.registry,
            self.root,
            self.console,
        )
        base_version = family
        if spec.start_from:
            # Two stages (SFT, then DPO): this run starts from the other run's registered
            # full weights (the resolver requires them), trained first if it is not yet.
            upstream = self.train(experiment, spec.start_from)
            base_version = upstream.version
            base_path = self.registry.materialize(upstream.version)
        dataset_name = split_ref(spec.dataset)[0]
        prepared = Preparer(self.loaded, self.registry, self.console).prepare(dataset_name)
        dataset = self.desired.resources[f"Dataset/{dataset_name}"].spec_as(DatasetSpec)
        validation = prepared.folder / "validation.jsonl"
        training = dict(resource.fields["training"])  # the job's options, as written and locked
        job = TrainJob(
            run_id=f"{experiment}/{run}",
            base_model=str(base_path),
            train_file=str(prepared.folder / "train.jsonl"),
            eval_file=str(validation)
            if validation.is_file() and validation.stat().st_size
            else None,
            output=str(run_dir),
            format=dataset.format,
            training=training,
            trust_remote_code=bool(family.trust_remote_code),
        )
        executor = dict(training.get("executor") or {})
        if spec.training.executor.type == "kubernetes" and spec.training.distributed.world_size > 1:
            result = self._run_trainjob(job, run_dir, resource.digest, executor)
        elif spec.training.executor.type == "kubernetes":
            result = self._run_kubernetes(job, run_dir, resource.digest, executor)
        else:
            fd, waited = self._claim(run_dir)
            try:
                # Another llmops process trained this run meanwhile: its version is the result.
                if waited and not force:
                    cached = self._cached(name, resource, run, run_dir)
                    if cached is not None:
                        return cached
                # The run folder travels through the artifact store (when one is set): the
                # checkpoints another runner pushed are resumed from, and this run's are
                # pushed whether it finishes or fails.
                store, state_root = self.registry.blobs.store, self.registry.paths.root
                pull_folder(store, state_root, run_dir)
                try:
                    result = self._run_local(job, run_dir, fd)
                except BaseException:
                    with contextlib.suppress(StoreError):  # the run's failure is the news
                        push_folder(store, state_root, run_dir)
                    raise
                push_folder(store, state_root, run_dir)
            finally:
                runlock.release(fd)
        version = self._register(
            name,
            resource,
            job,
            result,
            run_dir,
            base_version,
            prepared.version.version,
            experiment,
            run,
        )
        return TrainOutcome("trained", run, version, result, run_dir)

    def _cached(
        self, name: str, resource: DesiredResource, run: str, run_dir: Path
    ) -> TrainOutcome | None:
        """A registered version of this run (same digest, files present, reusable)."""
        for existing in self.registry.all_by(name, resource.digest):
            if not self.registry.has_files(existing):
                continue
            ok, why = self.reusable(existing, resource.code_version, resource.code_files)
            if not ok:
                self.console.print(f"  not reusing {name}@{existing.number}: {why}; training again")
                continue
            result = (
                json.loads((run_dir / "result.json").read_text())
                if (run_dir / "result.json").is_file()
                else {}
            )
            return TrainOutcome("cached", run, existing, result, run_dir)
        return None

    def _claim(self, run_dir: Path) -> tuple[int, bool]:
        """The run folder's lock, taken before this apply starts a trainer there (and handed
        to it). A trainer whose apply was killed still holds it: stopped here (SIGTERM, then
        SIGKILL), so two processes never write one run, and the new one resumes from the last
        checkpoint. One a live llmops process started is waited for; True when that happened
        (the run may be registered now)."""
        stopping: int | None = None
        since = 0.0
        waited = False
        while (fd := runlock.try_lock(run_dir)) is None:
            found = runlock.holder(run_dir)
            if found is not None and found.orphaned():
                if stopping != found.pid:
                    self.console.print(
                        f"  stopping training process {found.describe()}: the apply that "
                        f"started it was killed, and it still writes {run_dir}"
                    )
                    _signal(found.pid, signal.SIGTERM)
                    stopping, since = found.pid, time.monotonic()
                elif time.monotonic() - since > STOP_GRACE_S:
                    _signal(found.pid, signal.SIGKILL)
            elif not waited:
                self.console.print(
                    f"  waiting for the training process that writes {run_dir} "
                    f"({found.describe() if found else 'holder unknown'})"
                )
                waited = True
            time.sleep(0.2)
        return fd, waited

    def _run_local(self, job: TrainJob, run_dir: Path, lock_fd: int) -> dict[str, Any]:
        """The runner in its own process: a crash there never takes state here with it. It
        inherits the run folder's lock (`lock_fd`, held by this apply) and keeps it for life."""
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").unlink(missing_ok=True)
        job.save(run_dir / "job.json")
        log = run_dir / LOG_FILE
        stderr_path = run_dir / "stderr.log"
        with (
            stderr_path.open("w") as stderr,
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                "{task.fields[loss]}",
                console=self.console,
                transient=True,
            ) as progress,
        ):
            task = progress.add_task(f"training {job.run_id}", total=None, loss="")
            process = subprocess.Popen(
                [sys.executable, "-m", "runners.train", str(run_dir / "job.json")],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(lock_fd,),
                # Training runs model and data code: apply's tokens and keys stay out.
                env=environment.minimal(
                    {runlock.FD_ENV: str(lock_fd), runlock.PARENT_ENV: str(os.getpid())},
                    # Crash tests' switches (runners/train/loop.py FAULT_ENV, read there;
                    # importing it here would load torch into apply).
                    keep=(
                        "LLMOPS_FAULT_EXIT_AFTER_STEP",
                        "LLMOPS_FAULT_RANK",
                        runlock.KEEP_ORPHAN_ENV,
                    ),
                ),
            )
            runlock.record(lock_fd, process.pid, os.getpid())
            while process.poll() is None:
                time.sleep(0.5)
                try:
                    records = training_steps(read_log(log))
                except LogError:  # only the progress bar reads it here; the run decides
                    records = []
                if records:
                    last = records[-1]
                    total = job.training.get("max_steps")
                    progress.update(
                        task, completed=last["step"], total=total, loss=f"loss {last['loss']:.3f}"
                    )
        result_path = run_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if process.returncode == 0 and result.get("status") == "succeeded":
            return result
        # crashed: a rank of a distributed run died; the message names it (resumable).
        if result.get("status") in ("unhealthy", "failed", "crashed"):
            raise TrainFailed(f"{job.run_id}: {result['message']}")
        tail = stderr_path.read_text().strip().splitlines()[-5:]
        raise TrainFailed(
            f"{job.run_id}: the training process died (exit "
            f"{process.returncode}); run the command again to resume from the "
            f"last checkpoint. Last output:\n" + "\n".join(tail)
        )

    def kubernetes_job(self, experiment: str, run: str) -> dict[str, Any]:
        """The Job manifest a Kubernetes run would submit (for review; nothing is sent): a
        TrainJob for a distributed run."""
        from controller.apply.kubernetes_job import STORE_SECRET, manifest, render_job

        resource = self.desired.resources[f"Experiment/{experiment}/{run}"]
        executor = dict(resource.fields["training"].get("executor") or {})
        job_file = self.run_dir(resource) / "job.json"
        if resource.spec_as(ExperimentSpec).training.distributed.world_size > 1:
            distributed = dict(resource.fields["training"].get("distributed") or {})
            return self._trainjob(
                job_file, f"{experiment}/{run}", resource.digest, executor, distributed
            )
        return manifest(
            render_job(
                job_file,
                f"{experiment}/{run}",
                resource.digest,
                executor,
                self.registry.paths.root,
                STORE_SECRET if store_backed() else None,
            )
        )

    def _run_kubernetes(
        self, job: TrainJob, run_dir: Path, digest: str, executor: dict[str, Any]
    ) -> dict[str, Any]:
        """Submit the run as a Job over the shared state volume, or over the S3 store
        (LLMOPS_STORE, the Secret's), and wait for it."""
        from controller.apply import kubernetes_job as k8s

        state = self.registry.paths.root
        mount = executor.get("state_mount_path", "/llmops")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").unlink(missing_ok=True)
        over_store = self._stage_in_store(job, run_dir)
        if not over_store:
            TrainJob(**k8s.rewrite_paths(asdict(job), state, mount)).save(run_dir / "job.json")
        manifest = k8s.render_job(
            run_dir / "job.json",
            job.run_id,
            digest,
            executor,
            state,
            k8s.STORE_SECRET if over_store else None,
        )
        try:
            api = k8s.api_client(os.environ.get("LLMOPS_KUBERNETES_API"))
        except k8s.JobFailed as err:
            raise TrainFailed(f"{job.run_id}: {err}") from err
        how = k8s.submit(api, manifest)
        self.console.print(
            f"  Job {manifest.metadata.namespace}/{manifest.metadata.name} {how}; waiting for it"
        )
        status = k8s.wait(
            api,
            manifest.metadata.namespace,
            manifest.metadata.name,
            float(executor.get("timeout_s", 86400)),
        )
        if over_store:
            self._collect_from_store(run_dir)
        result_path = run_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if status.succeeded and result.get("status") == "succeeded":
            return result
        reason = result.get("message") or status.message or "no result.json in the run folder"
        raise TrainFailed(f"{job.run_id}: Job {manifest.metadata.name} failed: {reason}")

    def _run_trainjob(
        self, job: TrainJob, run_dir: Path, digest: str, executor: dict[str, Any]
    ) -> dict[str, Any]:
        """Submit a distributed run as a Kubeflow Trainer TrainJob and wait for it: over the
        state volume, or over the store (LLMOPS_STORE, the Secret's) when one is set."""
        from controller.apply import kubeflow_trainjob as trainer_api
        from controller.apply import kubernetes_job as k8s

        state = self.registry.paths.root
        mount = executor.get("state_mount_path", "/llmops")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "result.json").unlink(missing_ok=True)
        if not self._stage_in_store(job, run_dir):
            TrainJob(**k8s.rewrite_paths(asdict(job), state, mount)).save(run_dir / "job.json")
        distributed = dict(job.training.get("distributed") or {})
        trainjob = self._trainjob(run_dir / "job.json", job.run_id, digest, executor, distributed)
        meta = trainjob["metadata"]
        try:
            api = k8s.api_client(os.environ.get("LLMOPS_KUBERNETES_API"))
            how = trainer_api.submit(api, trainjob)
            self.console.print(f"  TrainJob {meta['namespace']}/{meta['name']} {how}; waiting")
            status = trainer_api.wait(
                api, meta["namespace"], meta["name"], float(executor.get("timeout_s", 86400))
            )
        except k8s.JobFailed as err:
            raise TrainFailed(f"{job.run_id}: {err}") from err
        if store_backed():
            self._collect_from_store(run_dir)
        result_path = run_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if status.succeeded and result.get("status") == "succeeded":
            return result
        reason = result.get("message") or status.message or "no result.json in the run folder"
        raise TrainFailed(f"{job.run_id}: TrainJob {meta['name']} failed: {reason}")

    def _trainjob(
        self,
        job_file: Path,
        run_id: str,
        digest: str,
        executor: dict[str, Any],
        distributed: dict[str, Any],
    ) -> dict[str, Any]:
        """The TrainJob of a distributed run: over the store's Secret when LLMOPS_STORE is
        set (the job named by its key in the state folder), else over the state volume."""
        from controller.apply import kubeflow_trainjob as trainer_api

        state = self.registry.paths.root
        store = store_backed()
        return trainer_api.render_trainjob(
            job_file.relative_to(state) if store else job_file,
            run_id,
            digest,
            executor,
            distributed,
            state,
            trainer_api.STORE_SECRET if store else None,
        )

    def _stage_in_store(self, job: TrainJob, run_dir: Path) -> bool:
        """With an S3 store, the job file and its inputs staged there for the pod (paths
        relative to the state folder); False: the pod mounts the state folder's claim."""
        store = self.registry.blobs.store
        if not store_backed() or store is None:
            return False
        try:
            stage(
                store,
                self.registry.paths.root,
                run_dir / "job.json",
                asdict(job),
                paths=("base_model", "train_file", "eval_file", "output"),
                inputs=("base_model", "train_file", "eval_file"),
                output=str(run_dir),
                model=str(run_dir / "model"),
            )
        except (StagingFailed, StoreError) as err:
            raise TrainFailed(f"{job.run_id}: {err}") from err
        return True

    def _collect_from_store(self, run_dir: Path) -> None:
        """The run folder the pod pushed, fetched here (result.json, log, model)."""
        store = self.registry.blobs.store
        if store is not None:
            collect(store, self.registry.paths.root, run_dir)

    def _register(
        self,
        name: str,
        resource: DesiredResource,
        job: TrainJob,
        result: dict[str, Any],
        run_dir: Path,
        base: VersionRow,
        dataset_version: str,
        experiment: str,
        run: str,
    ) -> VersionRow:
        files = self._stored_files(run_dir, base)
        metadata = self._metadata(run_dir / "model", resource, result, base)
        trusted = self.trust is None or self.trust.trusted
        first_eval, _ = first_last_eval(read_log(run_dir / LOG_FILE))
        version = self.registry.register(
            NewVersion(
                name=name,
                files=files,
                metadata=metadata,
                spec_digest=resource.digest,
                source={"type": "experiment", "experiment": experiment, "run": run},
                tags={
                    "experiment": experiment,
                    "run": run,
                    "kind": str(result.get("model_kind")),
                    "namespace": "trusted" if trusted else UNTRUSTED_NAMESPACE,
                },
                description=f"Fine-tuned from {base.model.name}@{base.number} by experiment "
                f"{experiment}",
                lineage={
                    "base_version_id": base.id,
                    "dataset_version": dataset_version,
                    "experiment_run": f"{experiment}/{run}",
                    # The pull request's head rather than GitHub's synthetic merge commit.
                    "git_commit": self.trust.commit if self.trust else head_commit(self.root),
                    "config_digest": resource.digest,
                    "packages": result.get("packages", {}),
                    "seeds": {"training": result.get("seed")},
                },
            )
        )
        metrics = {"train/final_loss": result["final_loss"]}
        if result.get("final_eval_loss") is not None:
            metrics["train/final_eval_loss"] = result["final_eval_loss"]
        if first_eval is not None:
            metrics["train/first_eval_loss"] = first_eval
        self.registry.add_metrics(
            version.id,
            "training",
            resource.digest,
            metrics,
            self.provenance(resource.code_version).get("provenance"),
        )
        version = self.registry.find(f"{name}@{version.number}") or version
        self.registry.set_card(
            version.id, render_card(version, base_ref=f"{base.model.name}@{base.number}")
        )
        return self.registry.find(f"{name}@{version.number}") or version

    def _stored_files(self, run_dir: Path, base: VersionRow) -> list[tuple[str, Blob]]:
        """The run's model files (an adapter's config pointing at the base) and training files,
        put into the blob store."""
        model_dir = run_dir / "model"
        files: list[tuple[str, Blob]] = []
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            stored = path
            if path == model_dir / "adapter_config.json":
                stored = _adapter_config_on(base, path, run_dir / ".adapter_config.json")
            files.append((path.relative_to(model_dir).as_posix(), self.registry.blobs.put(stored)))
        for file in TRAINING_FILES:
            if (run_dir / file).is_file():
                files.append((f"training/{file}", self.registry.blobs.put(run_dir / file)))
        return files

    def _metadata(
        self,
        model_dir: Path,
        resource: DesiredResource,
        result: dict[str, Any],
        base: VersionRow,
    ) -> dict[str, Any]:
        """The version's metadata: read from its files (an adapter's from its base), its
        license, kind and provenance."""
        metadata: dict[str, Any] = inspect_folder(model_dir)
        if result.get("model_kind") == "adapter":
            metadata.update(
                {
                    k: getattr(base, k)
                    for k in ("architecture", "model_type", "context_length", "vocab_size", "dtype")
                }
            )
            metadata["adapter_parameters"] = metadata.pop("parameters", None)
            metadata["parameters"] = base.parameters
        metadata["license"] = base.license
        metadata["model_kind"] = result.get("model_kind")
        metadata.update(self.provenance(resource.code_version))
        return metadata

    def overlay(self, experiment: str, outcomes: list[TrainOutcome]) -> Path:
        """Curves of every run of the experiment in one PNG."""
        target = self.registry.paths.runs(experiment) / "curves.png"
        logs = {f"run {o.run} → {o.ref}": o.run_dir / LOG_FILE for o in outcomes}
        plot_runs(logs, target, f"experiment {experiment}")
        return target


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal a trainer left running; checked first, so a recycled pid is never hit. SIGCONT
    after it: a stopped process (Ctrl-Z, a debugger) acts on SIGTERM only once continued."""
    if runlock.is_training_process(pid):
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)


def _adapter_config_on(base: VersionRow, config: Path, out: Path) -> Path:
    """The adapter's config naming its base version's folder as the registry lays versions
    out (`../../<base>/<number>` from the adapter's own folder, runners/weights.py
    `adapter_base`) instead of the absolute path it trained on: the adapter-only version
    loads wherever the registry materialises it, with no merged copy."""
    data = json.loads(config.read_text(encoding="utf-8"))
    data["base_model_name_or_path"] = f"../../{base.model.name}/{base.number}"
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
