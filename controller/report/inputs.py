"""Report, inputs: everything the pull request's report shows, gathered from git, the lock
files, the specs, the registry and the state folder into one `ReportInputs`.

`gather_report_inputs` does the work behind `llmops report` (the CLI only parses arguments,
renders and publishes), as DVC's dvc/repo/diff.py does behind dvc/commands/diff.py:
- the lock file at the base ref (`lock_at`, through controller/state/git.py) and in the
  working tree; the plan of this branch's specs against the base's lock;
- what each desired evaluation will decide (`desired_evaluations`: its suite's gate rules),
  so that an evaluation not yet run on these specs is shown as pending, never with an older
  verdict;
- the loss curves of trained runs from the registered version's training log
  (runners/train/log.py reads it) with its curves.png copied beside the report;
- rows added, removed and changed between the base's and this branch's dataset versions;
- unified diffs of the KServe manifests a changed deployment had and will have.
Importable without the CLI: the registry is opened through controller.state.
"""

from __future__ import annotations

import difflib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.api.dataset import DatasetSpec
from controller.api.deployment import DeploymentSpec
from controller.api.evaluation import EvaluationSpec
from controller.api.experiment import ExperimentSpec
from controller.observe.applied import observed_from_lock
from controller.plan.address import Address
from controller.plan.kinds import DATASET, EXPERIMENT
from controller.plan.planner import plan
from controller.plan.types import DesiredState
from controller.report.markdown import Curve, DesiredEvaluation, ReportInputs
from controller.state import git
from controller.state.lockfile import (
    LOCK_FILE,
    DatasetOutputs,
    ExperimentOutputs,
    LockEntry,
    LockFile,
    parse_lock,
    read_lock,
)
from controller.state.paths import StatePaths
from controller.state.provenance import Provenance
from controller.state.registry.db import RegistryUnavailable
from controller.state.registry.store import Registry
from controller.targets.base import target_for
from runners.data.diff import diff_rows
from runners.data.preparation import read_split
from runners.data.splits import SPLITS
from runners.evaluate.compare import judge_gates
from runners.train.log import LogError, losses, read_log

ASSETS_DIR = "report-assets"  # beside the report: images it links to


def lock_at(root: Path, ref: str) -> LockFile:
    """llmops.lock as of a git ref; an empty lock when that commit has none.

    Raises GitError for a ref that names no commit and LockFileError for a lock file that
    cannot be read (its diagnostic names `llmops.lock at <ref>`)."""
    text = git.show_file(root, ref, LOCK_FILE)
    if text is None:
        return LockFile()
    return parse_lock(text, f"{LOCK_FILE} at {ref}")


def head_name(root: Path) -> str:
    """HEAD's short sha, marked when the specs have uncommitted changes."""
    name = git.short_head(root) or "HEAD"
    return f"{name} + uncommitted specs" if git.changed_paths(root, "specs") else name


def open_registry(paths: StatePaths) -> Registry | None:
    """The registry when there is one (configured by URL or created here), else None."""
    if not paths.has_registry:
        return None
    try:
        return Registry.open(paths)
    except RegistryUnavailable:
        return None


def gate_names(suite_spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The "task/metric rule" names a suite's gates are judged under, as apply records them.

    The names come from the runner's own judge (runners/evaluate/compare.py) run on no
    results, so they cannot drift from the ones an evaluation writes to the lock file."""
    return tuple(f"{g.metric} {g.rule}" for g in judge_gates(suite_spec.get("gates") or [], {}, {}))


def _control_run(desired: DesiredState, experiment: str) -> str | None:
    """The run an experiment's other runs are compared with, when its control names one (as
    apply reads it: from the experiment's first run)."""
    runs = sorted(
        (str(r.address), spec) for r, spec in desired.specs(ExperimentSpec) if r.name == experiment
    )
    control = runs[0][1].control if runs else None
    return control.run if control else None


def desired_evaluations(desired: DesiredState) -> dict[str, DesiredEvaluation]:
    """Each desired Evaluation's suite, subject and the gates it decides (the control decides
    none: it is what the runs are compared with)."""
    out = {}
    for resource, spec in desired.specs(EvaluationSpec):
        address, suite = resource.address, spec.suite
        suite_resource = desired.resources.get(str(Address("EvalSuite", suite)))
        control = ("control", _control_run(desired, address.experiment))
        # an endpoint a suite names is measured, not gated (no run of its own to promote)
        judged = address.run not in control and suite_resource is not None and not spec.endpoint
        out[str(address)] = DesiredEvaluation(
            suite=suite,
            subject=spec.subject,
            gates=gate_names(suite_resource.fields) if judged and suite_resource else (),
        )
    return out


def _this_branch(
    desired: DesiredState, head_lock: Mapping[str, LockEntry], kind: str
) -> list[tuple[str, LockEntry]]:
    """Head lock entries of `kind` that record the desired digest, by address."""
    out = []
    for address in sorted(desired.resources):
        resource = desired.resources[address]
        entry = head_lock.get(address)
        if resource.kind == kind and entry is not None and entry.digest == resource.digest:
            out.append((address, entry))
    return out


def collect_curves(
    registry: Registry | None,
    desired: DesiredState,
    head_lock: Mapping[str, LockEntry],
    assets: Path,
    relative_to: Path,
) -> dict[str, Curve]:
    """Loss per step of each run trained for these specs, from the training log registered
    with its model version; its curves.png copied into `assets` (linked relative to
    `relative_to`, the report's folder)."""
    if registry is None:
        return {}
    curves = {}
    for address, entry in _this_branch(desired, head_lock, EXPERIMENT):
        outputs = entry.outputs
        version = registry.find(outputs.version) if isinstance(outputs, ExperimentOutputs) else None
        if version is None:
            continue
        files = {f.path: f.sha256 for f in version.files}
        log = files.get("training/log.jsonl")
        if log is None:
            continue
        try:
            steps = losses(read_log(registry.blobs.local(log)))
        except LogError:
            continue
        image = blob = None
        png = files.get("training/curves.png")
        if png is not None and registry.blobs.local(png).is_file():
            parsed = desired.resources[address].address
            stem = "-".join(p for p in (parsed.kind, parsed.name, parsed.run) if p).lower()
            assets.mkdir(parents=True, exist_ok=True)
            copy = assets / f"{stem}.png"
            shutil.copyfile(registry.blobs.local(png), copy)
            image = copy.relative_to(relative_to).as_posix()
            blob = f"sha256:{png}"
        curves[address] = Curve(steps, image, blob)
    return curves


def dataset_diffs(
    registry: Registry | None,
    desired: DesiredState,
    base_lock: Mapping[str, LockEntry],
    head_lock: Mapping[str, LockEntry],
) -> dict[str, dict[str, Any]]:
    """Rows added, removed and changed between the base's and this branch's dataset versions,
    where both versions are in the local store."""
    if registry is None:
        return {}
    out = {}
    for address, entry in _this_branch(desired, head_lock, DATASET):
        before = base_lock.get(address)
        if before is None:
            continue
        old, new = before.outputs, entry.outputs
        if not (isinstance(old, DatasetOutputs) and isinstance(new, DatasetOutputs)):
            continue
        if not old.version or not new.version or old.version == new.version:
            continue
        name = desired.resources[address].name
        before_dir = registry.paths.dataset_version(name, old.version)
        after_dir = registry.paths.dataset_version(name, new.version)
        if not (before_dir.is_dir() and after_dir.is_dir()):
            continue
        fmt = desired.resources[address].spec_as(DatasetSpec).format
        out[address] = diff_rows(
            [r for s in SPLITS for r in read_split(before_dir, s)],
            [r for s in SPLITS for r in read_split(after_dir, s)],
            fmt,
            examples=0,
        )
    return out


def manifest_diffs(
    registry: Registry | None, desired: DesiredState, base_lock: Mapping[str, LockEntry]
) -> dict[str, str]:
    """Unified diffs of the KServe manifests a deployment had at the base (its lock entry's
    spec and version) and will have with this branch's spec."""
    out = {}
    for resource, spec in sorted(desired.specs(DeploymentSpec), key=lambda pair: pair[0].address):
        address = str(resource.address)
        before = base_lock.get(address)
        if before is not None and before.digest == resource.digest:
            continue
        base_side = _manifests(
            resource.name,
            before.spec if before else None,
            getattr(before.outputs, "version", None) if before else None,
        )
        version = registry.find(spec.model) if registry is not None else None
        branch_side = _manifests(
            resource.name,
            dict(resource.fields),
            f"{version.model.name}@{version.number}" if version else None,
        )
        if base_side or branch_side:
            diff = difflib.unified_diff(base_side, branch_side, "base", "this branch", n=2)
            out[address] = "".join(diff)
    return out


def _manifests(name: str, spec: Mapping[str, Any] | None, version: str | None) -> list[str]:
    """A deployment's manifests as YAML lines, as its target renders them; [] for targets
    that apply none."""
    if not spec:
        return []
    return target_for(spec.get("target")).manifest_lines(name, spec, version or str(spec["model"]))


def gather_report_inputs(
    root: Path, desired: DesiredState, base_ref: str, assets_dir: Path
) -> ReportInputs:
    """The report's inputs for the specs `desired` (loaded from `root`) against `base_ref`.

    `assets_dir` receives the images the report links to; links are relative to its parent
    (the report's folder). Raises GitError for an unknown ref and LockFileError for a lock
    file (at the base or here) that cannot be read.
    """
    base_lock = lock_at(root, base_ref)
    head_lock = read_lock(root / LOCK_FILE).resources
    registry = open_registry(StatePaths.for_repo(root))
    observed = observed_from_lock(base_lock, source=f"{LOCK_FILE} at {base_ref}")
    return ReportInputs(
        base=base_ref,
        head=head_name(root),
        plan=plan(desired, observed),
        base_lock=base_lock.resources,
        head_lock=head_lock,
        desired={a: r.digest for a, r in desired.resources.items()},
        curves=collect_curves(registry, desired, head_lock, assets_dir, assets_dir.parent),
        dataset_diffs=dataset_diffs(registry, desired, base_lock.resources, head_lock),
        deployments={str(r.address): spec.model for r, spec in desired.specs(DeploymentSpec)},
        manifest_diffs=manifest_diffs(registry, desired, base_lock.resources),
        evaluations=desired_evaluations(desired),
        untrusted=untrusted_results(registry, desired, head_lock),
    )


def untrusted_results(
    registry: Registry | None, desired: DesiredState, head_lock: Mapping[str, LockEntry]
) -> dict[str, str]:
    """Runs this branch shows whose registered version an untrusted ref produced."""
    out: dict[str, str] = {}
    if registry is None:
        return out
    for address, entry in head_lock.items():
        resource = desired.resources.get(address)
        version = getattr(entry.outputs, "version", None)
        if resource is None or entry.kind != EXPERIMENT or entry.digest != resource.digest:
            continue
        row = registry.find(version) if isinstance(version, str) and "@" in version else None
        recorded = Provenance.from_dict((row.extra or {}).get("provenance")) if row else None
        if recorded is not None and not recorded.trusted:
            out[address] = f"{version} from {recorded.describe()}"
    return out
