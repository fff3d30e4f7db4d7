"""Production loop, run: one run of a Pipeline spec, step by step, on a branch of its own.

The steps work in a git worktree of the base branch (under the state folder) with the shared
registry and stores, so everything is reused by digest: a rerun after a crash redoes each
step's bookkeeping in seconds and trains nothing twice. Each step's result is recorded in
`<state>/pipelines/<name>/state.json`; nothing reaches the base branch: the run ends with a
pushed branch and a pull request, and deploying happens after merge through `llmops apply`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configobj import ConfigObj  # DVC's own config format
from rich.console import Console
from ruamel.yaml import YAML

from controller.api.dataset import CollectedSource, DatasetSpec
from controller.api.deployment import DeploymentSpec
from controller.api.pipeline import (
    ArenaStep,
    OpenPullRequestStep,
    PipelineSpec,
    RegressionTestStep,
    RetrainStep,
    UpdateDatasetStep,
)
from controller.apply.arena import ArenaRunner
from controller.apply.engine import fault_point, gate_name
from controller.apply.evaluate import Evaluator
from controller.apply.hooks import ConsoleHooks
from controller.apply.prepare import Preparer
from controller.apply.train import Trainer
from controller.load.desired import Loaded, load_desired
from controller.loop import window as windows
from controller.loop.trigger import decide
from controller.observe.sources import SourceDigests
from controller.plan.address import Address
from controller.report.inputs import gather_report_inputs
from controller.report.markdown import render_report
from controller.report.terminal import gate_line
from controller.state import git
from controller.state.apply_mutex import ApplyBusy, exclusive_apply
from controller.state.dvc import DvcError, ensure_repo, track_and_push
from controller.state.lockfile import LOCK_FILE, DeploymentOutputs, read_lock
from controller.state.paths import STATE_DIR_ENV, StatePaths
from controller.state.registry.store import Registry
from controller.workspace import load, plan_and_apply
from runners.errors import InvalidInput, LlmopsError

STEPS = ("update_dataset", "retrain", "regression_test", "open_pull_request")
KEEP_RUNS = 20


class PipelineFailed(LlmopsError):
    """A step failed (a gate, a failed training); the run record says which."""


@dataclass
class RunRecord:
    """One run: its window of collected rows, each step's status and outputs, the outcome."""

    id: str
    started: str
    status: str = "running"  # running | skipped | failed | succeeded
    message: str = ""
    base: str = ""
    branch: str = ""
    window: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PipelineState:
    """What a pipeline remembers between runs: the last completed run and recent ones."""

    path: Path
    last: dict[str, Any] | None = None  # the last run that got to the end (status succeeded)
    current: dict[str, Any] | None = None  # a run that has not finished (crashed or running)
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> PipelineState:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as err:
            raise InvalidInput(
                f"{path} is not readable ({err}); move it away to start the pipeline afresh"
            ) from err
        return cls(path, data.get("last"), data.get("current"), list(data.get("runs") or []))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        data = {"last": self.last, "current": self.current, "runs": self.runs[-KEEP_RUNS:]}
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class Steps:
    """The pipeline spec's steps, by step name."""

    dataset: str
    experiment: str
    run: str
    suite: str
    against: str
    deployment: str
    branch_prefix: str
    reviewers: tuple[str, ...]
    labels: tuple[str, ...]
    arena: str | None = None

    @classmethod
    def of(cls, name: str, spec: PipelineSpec) -> Steps:
        by_step = {s.step: s for s in spec.steps}
        missing = [s for s in STEPS if s not in by_step]
        if missing:
            raise InvalidInput(
                f"pipeline {name} has no {', '.join(missing)} step; `llmops pipeline run` "
                f"runs the loop {' -> '.join(STEPS)}"
            )
        update, retrain, regression, pr, arena = (
            by_step["update_dataset"],
            by_step["retrain"],
            by_step["regression_test"],
            by_step["open_pull_request"],
            by_step.get("arena"),
        )
        assert isinstance(update, UpdateDatasetStep) and isinstance(retrain, RetrainStep)
        assert isinstance(regression, RegressionTestStep)
        assert isinstance(pr, OpenPullRequestStep)
        return cls(
            dataset=update.dataset,
            experiment=retrain.experiment,
            run=retrain.run,
            suite=regression.suite,
            against=regression.against,
            deployment=pr.deployment,
            branch_prefix=pr.branch_prefix,
            reviewers=tuple(pr.reviewers),
            labels=tuple(pr.labels),
            arena=arena.arena if isinstance(arena, ArenaStep) else None,
        )


Publisher = Callable[[str, str, str, list[str], list[str]], dict[str, Any]]


class PipelineRun:
    """`llmops pipeline run NAME`: trigger, then update_dataset, retrain, regression_test and
    open_pull_request, resumable and idempotent."""

    def __init__(
        self,
        root: Path,
        name: str,
        console: Console,
        *,
        base: str = "main",
        remote: str = "origin",
        scheduled: bool = False,
        now: datetime | None = None,
        publish: Publisher | None = None,
        report_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.console = console
        self.base = base
        self.remote = remote
        self.scheduled = scheduled
        self.now = now or datetime.now(UTC)
        self.publish = publish
        self.report_failure = report_failure
        self.paths = StatePaths.for_repo(root)
        self.folder = self.paths.pipeline(name)
        self.state = PipelineState.read(self.folder / "state.json")
        self.loaded = _checked(load(root), root)
        assert self.loaded.desired is not None
        self.desired = self.loaded.desired
        resource = self.desired.resources.get(str(Address("Pipeline", name)))
        if resource is None:
            known = sorted(r.name for r, _ in self.desired.specs(PipelineSpec))
            raise InvalidInput(
                f"no Pipeline spec named '{name}' (pipelines: {', '.join(known) or 'none'})"
            )
        self.spec = resource.spec_as(PipelineSpec)
        self.steps = Steps.of(name, self.spec)

    # -- what the run is about ------------------------------------------------------------

    def _store(self) -> str:
        deployment = self.desired.resources.get(str(Address("Deployment", self.steps.against)))
        collect = deployment.spec_as(DeploymentSpec).collect if deployment else None
        if collect is None or not collect.enabled or not collect.into:
            raise InvalidInput(
                f"deployment {self.steps.against} collects nothing; set collect: "
                "{enabled: true, into: <store>} in its spec"
            )
        return collect.into

    def _dataset_spec(self) -> DatasetSpec:
        address = str(Address("Dataset", self.steps.dataset))
        return self.desired.resources[address].spec_as(DatasetSpec)

    def _only_positive(self) -> bool:
        """The Dataset takes collected rows as its collected sources say (positive only by
        default: a thumbs-down answer is not one to learn from)."""
        sources = [s for s in self._dataset_spec().sources if isinstance(s, CollectedSource)]
        return all(s.only_positive_feedback for s in sources) if sources else True

    def _base_watermark(self) -> datetime | None:
        paths = [getattr(s, "path", "") for s in self._dataset_spec().sources]
        return windows.watermark(paths, self.steps.dataset)

    def fingerprint(self, watermark: datetime | None) -> str:
        """One branch per pipeline and base data: reruns before a merge update the same PR."""
        key = f"{self.name}:{self.steps.dataset}:{watermark.isoformat() if watermark else '-'}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    # -- the run --------------------------------------------------------------------------

    def run(self, dry_run: bool = False) -> RunRecord:
        store = self._store()
        base_mark = self._base_watermark()
        resumed = self.state.current
        if resumed and not dry_run:
            until = windows.parse_time(resumed["window"]["until"])
            self.console.print(f"resuming run {resumed['id']} (window up to {until:%H:%M:%S})")
        else:
            until = self.now
        window = windows.collected_window(self.paths.collected(store), store, base_mark, until)
        fmt = self._dataset_spec().format
        kept = window.kept(self._only_positive(), fmt)
        snapshot_text = windows.snapshot_lines(kept, fmt)
        digest = windows.content_digest(snapshot_text)
        last = self.state.last if self.state.last else {}
        since = max(
            [m for m in (base_mark, _time_or_none(last.get("until"))) if m is not None],
            default=None,
        )
        new_rows = sum(
            1 for r in window.rows if since is None or windows.parse_time(r["time"]) > since
        )
        record = RunRecord(
            id=resumed["id"] if resumed else self.now.strftime("%Y%m%dT%H%M%SZ"),
            started=resumed["started"] if resumed else self.now.isoformat(),
            branch=f"{self.steps.branch_prefix}{self.name}/{self.fingerprint(base_mark)}",
            window={
                "store": store,
                "after": base_mark.isoformat() if base_mark else None,
                "until": until.isoformat(),
                "rows": window.count,
                "new_rows": new_rows,
                "kept": len(kept),
                "digest": digest,
            },
        )
        if not resumed:
            skipped = self._skip_reason(record, last, new_rows, window.count, len(kept))
            if skipped is not None:
                record.status = "skipped"
                record.message = skipped
                if not dry_run:
                    self._finish(record)
                return record
        if dry_run:
            record.status = "would run"
            record.message = (
                f"{len(kept)} of {window.count} collected row(s) into {self.steps.dataset}; "
                f"retrain {self.steps.experiment}/{self.steps.run}; regression test on "
                f"{self.steps.suite} against {self.steps.against}; pull request from "
                f"{record.branch}"
            )
            return record
        self._execute(record, snapshot_text, until)
        return record

    def _skip_reason(
        self, record: RunRecord, last: dict[str, Any], new_rows: int, rows: int, kept: int
    ) -> str | None:
        """Why a new run does not go (the trigger says no, the same data as the last run, no
        row to train on), or None when it goes."""
        trigger = self.spec.trigger
        decision = decide(
            trigger.schedule,
            trigger.min_new_rows,
            new_rows,
            _time_or_none(last.get("finished")),
            self.now,
            self.scheduled,
        )
        same = last.get("digest") == record.window["digest"] and last.get("branch") == record.branch
        if not decision.go:
            return decision.reason
        if same:
            return "nothing new since the last run"
        if not kept:
            return f"none of the {rows} collected row(s) is one to train on"
        return None

    def _execute(self, record: RunRecord, snapshot_text: str, until: datetime) -> None:
        """The steps under the pipeline's lock and the state folder's apply mutex; a failed
        step is recorded and raised as PipelineFailed."""
        try:
            with exclusive_apply(self.folder, wait=False, activity=f"pipeline {self.name}"):
                self.state.current = record.as_dict()
                self.state.save()
                with exclusive_apply(self.paths.root, wait=True, on_wait=self._waiting):
                    self._steps(record, snapshot_text, until)
        except ApplyBusy:
            raise
        except LlmopsError as err:
            record.status = "failed"
            record.message = str(err)
            self._finish(record)
            raise PipelineFailed(str(err)) from err

    def _waiting(self, who: str) -> None:
        self.console.print(f"waiting for the apply in progress ({who})")

    def _finish(self, record: RunRecord) -> None:
        record.finished = datetime.now(UTC).isoformat()
        self.state.current = None
        if record.status == "succeeded":
            self.state.last = {
                "id": record.id,
                "finished": record.finished,
                "until": record.window["until"],
                "digest": record.window["digest"],
                "branch": record.branch,
            }
        self.state.runs.append(record.as_dict())
        self.state.save()

    def _step(self, record: RunRecord, step: str, outputs: dict[str, Any], seconds: float) -> None:
        record.steps[step] = {"status": "done", "seconds": round(seconds, 1), **outputs}
        self.state.current = record.as_dict()
        self.state.save()
        fault_point(f"after:pipeline/{step}")

    @contextmanager
    def _state_dir(self) -> Iterator[None]:
        """The worktree shares this repository's state folder (registry, blobs, stores)."""
        before = os.environ.get(STATE_DIR_ENV)
        os.environ[STATE_DIR_ENV] = str(self.paths.root)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(STATE_DIR_ENV, None)
            else:
                os.environ[STATE_DIR_ENV] = before

    def _steps(self, record: RunRecord, snapshot_text: str, until: datetime) -> None:
        registry = Registry.open(self.paths)
        record.base = git.resolve_commit(self.root, self.base)
        worktree = git.worktree_at(self.root, self.folder / "worktree", record.branch, record.base)
        with self._state_dir():
            started = time.monotonic()
            snapshot = self._update_dataset(worktree, snapshot_text, until)
            loaded = _checked(
                load_desired(
                    worktree,
                    cache_dir=self.paths.cache,
                    observe_source=SourceDigests(self.paths),
                ),
                worktree,
            )
            prepared = Preparer(loaded, registry, self.console).prepare(self.steps.dataset)
            self._step(
                record,
                "update_dataset",
                {
                    "snapshot": snapshot,
                    "rows": record.window["kept"],
                    "dataset_version": prepared.version.version,
                },
                time.monotonic() - started,
            )

            started = time.monotonic()
            trained = Trainer(loaded, registry, self.console).train(
                self.steps.experiment, self.steps.run
            )
            self._step(record, "retrain", {"version": trained.ref}, time.monotonic() - started)

            started = time.monotonic()
            served = self._served(registry)
            comparison = Evaluator(loaded, registry, self.console).compare(
                self.steps.suite, served, trained.ref
            )
            gates = {
                gate_name(g): {"passed": g.passed, "detail": g.detail} for g in comparison.gates
            }
            if self.steps.arena:
                arena = ArenaRunner(loaded, registry, self.console).run(self.steps.arena)
                gates.update(
                    {
                        f"arena {self.steps.arena}: {name}": verdict.model_dump()
                        for name, verdict in arena.gates.items()
                    }
                )
            for name, gate in gates.items():
                self.console.print("  " + gate_line(name, gate["passed"], gate["detail"]))
            outputs = {"candidate": trained.ref, "baseline": served, "gates": gates}
            failed = sorted(n for n, g in gates.items() if not g["passed"])
            if failed:
                record.steps["regression_test"] = {"status": "failed", **outputs}
                message = (
                    f"{trained.ref} failed gate(s) {', '.join(failed)} against {served} (served "
                    f"by {self.steps.against}); no pull request opened"
                )
                if self.report_failure is not None:
                    try:
                        self.report_failure(record.base, message + "\n\n" + _gate_table(gates))
                    except LlmopsError as err:  # the gate's verdict is the news, not this
                        self.console.print(f"  [yellow]could not report it on GitHub[/]: {err}")
                raise PipelineFailed(message)
            self._step(record, "regression_test", outputs, time.monotonic() - started)

            started = time.monotonic()
            outputs = self._open_pull_request(worktree, loaded, registry, record)
            self._step(record, "open_pull_request", outputs, time.monotonic() - started)
        record.status = "succeeded"
        record.message = outputs.get("message", "")
        self._finish(record)

    # -- the steps ------------------------------------------------------------------------

    def _update_dataset(self, worktree: Path, snapshot_text: str, until: datetime) -> str:
        """Write the snapshot, name it in the Dataset spec and track it with DVC."""
        snapshot = windows.snapshot_path(self.steps.dataset, until)
        target = worktree / snapshot
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(snapshot_text, encoding="utf-8")
        ensure_repo(worktree)
        self._pin_remote(worktree)
        address = str(Address("Dataset", self.steps.dataset))
        spec_file = worktree / next(s.doc.file for s in self.loaded.specs if s.address == address)
        _add_source(spec_file, self.steps.dataset, snapshot)
        try:
            track_and_push(worktree, target)
        except DvcError as err:
            raise PipelineFailed(f"tracking {snapshot} with DVC failed: {err}") from err
        return snapshot

    def _pin_remote(self, worktree: Path) -> None:
        """A DVC remote given relative to .dvc/ (the embedded default) means this repository's
        remote, not one inside the worktree: say so in the worktree's .dvc/config.local."""
        config = worktree / ".dvc" / "config"
        sections = ConfigObj(str(config)) if config.is_file() else {}
        local = []
        for section, settings in sections.items():
            if not section.startswith("remote "):
                continue
            name = section.removeprefix("remote ").strip('"')
            url = str(settings.get("url", ""))
            if url and "://" not in url and not Path(url).is_absolute():
                resolved = (self.root / ".dvc" / url).resolve()
                local.append(f"['remote \"{name}\"']\n    url = {resolved}\n")
        if local:
            (worktree / ".dvc" / "config.local").write_text("".join(local), encoding="utf-8")

    def _served(self, registry: Registry) -> str:
        """What the deployment serves now: its lock entry, else what its model reference names."""
        entry = read_lock(self.root / LOCK_FILE).get(Address("Deployment", self.steps.against))
        outputs = entry.outputs if entry is not None else None
        if isinstance(outputs, DeploymentOutputs) and outputs.version:
            return outputs.version
        address = str(Address("Deployment", self.steps.against))
        model = self.desired.resources[address].spec_as(DeploymentSpec).model
        found = registry.find(model)
        if found is None:
            raise PipelineFailed(
                f"deployment {self.steps.against} serves nothing yet ({model} "
                "is not in the registry); run llmops apply first"
            )
        return f"{found.model.name}@{found.number}"

    def _open_pull_request(
        self, worktree: Path, loaded: Loaded, registry: Registry, record: RunRecord
    ) -> dict[str, Any]:
        """Record everything on the branch's lock file (no promotion, no deploy: those follow
        the merge), commit, push and open or update the pull request."""
        assert loaded.desired is not None
        report = plan_and_apply(
            loaded, registry, ConsoleHooks(self.console), skip_deploy=True, skip_promote=True
        )
        if report.failed:
            raise PipelineFailed(
                "recording the branch's results failed: "
                + "; ".join(f"{r.address}: {r.message}" for r in report.failed)
            )
        window = record.window
        title = (
            f"llmops: retrain {self.steps.experiment} on {window['kept']} collected row(s) "
            f"({self.name})"
        )
        message = (
            f"{title}\n\nPipeline {self.name}, run {record.id}: rows collected by "
            f"{self.steps.against} into {window['store']} up to {window['until']}."
        )
        sha = git.commit_all(worktree, message)
        if not git.differs(worktree, record.base, sha):
            return {"message": "the branch has no difference from the base; nothing to propose"}
        assets = self.folder / "report" / "report-assets"
        inputs = gather_report_inputs(worktree, loaded.desired, record.base, assets)
        body = render_report(inputs)
        report_file = self.folder / "report" / "report.md"
        report_file.parent.mkdir(parents=True, exist_ok=True)
        report_file.write_text(body, encoding="utf-8")
        outputs: dict[str, Any] = {"commit": sha, "report": str(report_file)}
        if not git.has_remote(self.root, self.remote):
            if self.publish is not None:
                raise PipelineFailed(
                    f"no git remote '{self.remote}' to push {record.branch} to; add it "
                    "(git remote add) or name another with --remote"
                )
            outputs["message"] = (
                f"branch {record.branch} committed here (no remote '{self.remote}' to push "
                f"it to); the pull request text is in {report_file}"
            )
            return outputs
        git.push(worktree, self.remote, record.branch)
        if self.publish is None:
            outputs["message"] = (
                f"branch {record.branch} pushed to {self.remote}; no GitHub repository "
                f"configured, so the pull request text is in {report_file}"
            )
            return outputs
        pull = self.publish(
            record.branch, title, body, list(self.steps.reviewers), list(self.steps.labels)
        )
        outputs["pull_request"] = pull
        verb = "opened" if pull.get("created") else "updated"
        outputs["message"] = f"pull request #{pull['number']} {verb}: {pull['url']}"
        return outputs


def _checked(loaded: Loaded, root: Path) -> Loaded:
    """The specs of `root` (the repository, or the branch's worktree), which must load."""
    if not loaded.ok:
        shown = "; ".join(d.render() for d in loaded.diagnostics[:3])
        raise InvalidInput(f"the specs in {root} do not load: {shown}")
    return loaded


def _time_or_none(text: Any) -> datetime | None:
    return windows.parse_time(text) if isinstance(text, str) else None


def _gate_table(gates: dict[str, dict[str, Any]]) -> str:
    rows = [
        f"| {name} | {'pass' if g['passed'] else 'FAIL'} | {g['detail']} |"
        for name, g in sorted(gates.items())
    ]
    return "\n".join(["| gate | result | detail |", "|---|---|---|", *rows])


def _add_source(spec_file: Path, dataset: str, snapshot: str) -> None:
    """Append the snapshot as a file source of the Dataset document, keeping comments."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 100
    documents = list(yaml.load_all(spec_file.read_text(encoding="utf-8")))
    for document in documents:
        if (
            isinstance(document, dict)
            and document.get("kind") == "Dataset"
            and (document.get("metadata") or {}).get("name") == dataset
        ):
            sources = document["spec"]["sources"]
            if not any(s.get("path") == snapshot for s in sources):
                sources.append({"type": "file", "path": snapshot})
    with spec_file.open("w", encoding="utf-8") as handle:
        yaml.dump_all(documents, handle)
