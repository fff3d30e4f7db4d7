"""State, lock file: llmops.lock, the committed record of what was applied, by digest.

The one reader and writer of the lock file: `LockFile` holds a `LockEntry` per resource
address, each with the typed outputs of its kind. Every reader (apply, observation, status,
drift, the report's lock at a git ref, history's blobs, the Python client) goes through
`read_lock` or `parse_lock`; older schema versions are migrated on read, and a version this
llmops does not know is refused with a message saying what to do. Terraform's
internal/states/statefile and DVC's schema-checked dvc.lock are the models.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from controller.load.diagnostics import Diagnostic
from controller.plan.address import Address
from controller.plan.types import DesiredResource, DesiredState, SpecT
from runners.errors import InvalidInput
from runners.evaluate.compare import MetricComparison

LOCK_FILE = "llmops.lock"
LOCK_VERSION = 2

Metrics = dict[str, float | int]


class _Outputs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GateVerdict(_Outputs):
    passed: bool
    detail: str = ""


class ModelOutputs(_Outputs):
    version: str = ""  # "name@3"
    aliases: list[str] = Field(default_factory=list)  # moved by a promotion
    # A quantized artifact: the version it came from, the quality gate's fixed-text numbers
    # (perplexity_increase, token_agreement) and its suite gates' verdicts, as evaluations
    # record theirs ("task/metric rule" -> verdict).
    quantized_from: str | None = None
    metrics: Metrics = Field(default_factory=dict)
    gates: dict[str, GateVerdict] = Field(default_factory=dict)


class DatasetOutputs(_Outputs):
    version: str = ""  # "sha256:..." of the split files
    rows: dict[str, int] = Field(default_factory=dict)  # per split
    removed: dict[str, int] = Field(default_factory=dict)  # per preparation step


class EvalSuiteOutputs(_Outputs):
    tasks: int = 0


class ScanSummary(_Outputs):
    """What a brain scan of a trained version against its base found (details: llmops inspect)."""

    digest: str
    against: str | None = None
    modules_changed: list[str] = Field(default_factory=list)
    layers_changed_most: list[int] = Field(default_factory=list)
    alarms: list[str] = Field(default_factory=list)  # "error: <reason>" / "warning: <reason>"


class ExperimentOutputs(_Outputs):
    version: str = ""
    metrics: Metrics = Field(default_factory=dict)
    scan: ScanSummary | None = None


# One metric, candidate against baseline, with its paired-bootstrap 95% interval: the fields
# of the evaluate runner's MetricComparison but the per-sample flips (kept with the results).
# A change there changes the lock schema: the golden lock file in tests/golden/lock fails.
ComparisonRow = create_model(
    "ComparisonRow",
    __base__=_Outputs,
    **{
        name: (kind, ...)
        for name, kind in get_type_hints(MetricComparison).items()
        if name != "flipped"
    },
)


class EvaluationOutputs(_Outputs):
    subject: str = ""  # the model version evaluated
    suite: str = ""
    baseline: str | None = None  # what it was compared with, when anything
    metrics: Metrics = Field(default_factory=dict)
    comparison: list[ComparisonRow] = Field(default_factory=list)  # type: ignore[valid-type]
    gates: dict[str, GateVerdict] = Field(default_factory=dict)  # "task/metric rule" -> verdict
    # An endpoint the suite names (subject "endpoint:<name>"): its identity, settings and the
    # latency and token usage of its replies; never its key.
    endpoint: EndpointUsage | None = None

    @property
    def failed_gates(self) -> list[str]:
        return sorted(name for name, gate in self.gates.items() if not gate.passed)


class DeploymentOutputs(_Outputs):
    version: str = ""  # the model version served
    target: str = ""  # a deploy target's kind (controller/targets), "" before targets existed
    endpoint: str | None = None
    image: str | None = None  # docker
    context_digest: str | None = None  # docker
    built: bool | None = None  # docker: whether an engine built the image here
    image_id: str | None = None  # docker: the built and running image's id (config digest)
    revision: str | None = None  # kserve
    traffic: list[dict[str, Any]] | None = None  # kserve: per revision


class PipelineOutputs(_Outputs):
    steps: list[str] = Field(default_factory=list)


class Standing(_Outputs):
    """One model's line on an arena leaderboard (judge and human votes together)."""

    model: str
    rating: float
    lower: float
    upper: float
    rank: int
    battles: int


class JudgeQuality(_Outputs):
    """How far an arena's judge can be trusted: position bias and agreement with people."""

    judge: str  # "name@3" of a judge model, "metric:rouge_l" of a metric judge
    both_orders: int = 0  # battles with a verdict in each order, compared for position bias
    position_bias: float | None = None  # share of those whose verdict flips with the order
    shared: int = 0  # (judge vote, human vote) pairs on the same battles
    agreement: float | None = None  # share of those pairs that agree (both bad = tie)
    agreement_interval: tuple[float, float] | None = None
    kappa: float | None = None  # Cohen's kappa over the same pairs
    kappa_interval: tuple[float, float] | None = None
    confidence: float = 0.95
    counted: bool = True  # False: judge.require_agreement not met, judge votes not counted
    detail: str = ""


class EndpointUsage(_Outputs):
    """An endpoint contestant: what it is and how it was asked (never its key), and the
    latency and token usage of the answers it gave (stored with them, so a rerun that asks
    nothing still reports them)."""

    endpoint: str  # the API root
    model: str  # the served model's name
    settings: dict[str, Any] = Field(default_factory=dict)  # generation, concurrency
    answers: int = 0  # answers with a recorded request
    latency_s: float | None = None  # mean seconds per answered request
    latency_p95_s: float | None = None
    prompt_tokens: int | None = None  # totals from the replies' `usage`
    completion_tokens: int | None = None
    requests: int = 0  # HTTP requests this run (retries included); 0 when all were stored
    retries: int = 0


class ArenaOutputs(_Outputs):
    models: dict[str, str] = Field(default_factory=dict)  # reference -> "name@3" battled
    battles: int = 0
    votes: dict[str, int] = Field(default_factory=dict)  # per voter kind, counted votes
    unparseable: int = 0  # judge verdicts kept but not counted
    decided: int | None = None  # counted votes with a winner (None: an older lock file)
    leaderboard: list[Standing] = Field(default_factory=list)
    gates: dict[str, GateVerdict] = Field(default_factory=dict)
    judge: JudgeQuality | None = None  # None: no judge, or an older lock file
    endpoints: dict[str, EndpointUsage] = Field(  # per endpoint contestant, by its label
        default_factory=dict, exclude_if=lambda value: not value
    )

    @property
    def failed_gates(self) -> list[str]:
        return sorted(name for name, gate in self.gates.items() if not gate.passed)


Outputs = (
    ModelOutputs
    | DatasetOutputs
    | EvalSuiteOutputs
    | ExperimentOutputs
    | EvaluationOutputs
    | DeploymentOutputs
    | PipelineOutputs
    | ArenaOutputs
)
OUTPUTS: dict[str, type[_Outputs]] = {
    "Model": ModelOutputs,
    "Dataset": DatasetOutputs,
    "EvalSuite": EvalSuiteOutputs,
    "Experiment": ExperimentOutputs,
    "Evaluation": EvaluationOutputs,
    "Deployment": DeploymentOutputs,
    "Pipeline": PipelineOutputs,
    "Arena": ArenaOutputs,
}


class LockEntry(BaseModel):
    """What apply recorded for one resource: its digest, what it was made from, its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    digest: str
    code_version: str = ""
    inputs: dict[str, str] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    outputs: Outputs

    @model_validator(mode="before")
    @classmethod
    def _typed_outputs(cls, data: Any) -> Any:
        """Outputs are read as the model of the entry's kind (no guessing between kinds)."""
        if isinstance(data, dict) and not isinstance(data.get("outputs"), _Outputs):
            kind = data.get("kind")
            if kind not in OUTPUTS:
                raise ValueError(f"unknown kind {kind!r} (one of {', '.join(OUTPUTS)})")
            data = {**data, "outputs": OUTPUTS[kind].model_validate(data.get("outputs") or {})}
        return data

    @classmethod
    def of(cls, resource: DesiredResource, outputs: Outputs | None = None) -> LockEntry:
        """The entry recording `resource` as applied, with what applying it produced."""
        return cls(
            kind=resource.kind,
            digest=resource.digest,
            code_version=resource.code_version,
            inputs=dict(resource.inputs),
            spec=dict(resource.fields),
            outputs=outputs if outputs is not None else OUTPUTS[resource.kind](),
        )

    def applied_spec(self, model: type[SpecT]) -> SpecT | None:
        """The spec as applied, read as `model` (e.g. ArenaSpec); None when it does not
        validate (a shape an older llmops wrote), so callers fall back as for no entry."""
        try:
            return model.model_validate(self.spec)
        except ValidationError:
            return None

    def as_json(self) -> dict[str, Any]:
        """Defaults are left out, so an entry's text changes only where a value does."""
        data = self.model_dump(mode="json", exclude={"outputs"})
        data["outputs"] = self.outputs.model_dump(mode="json", exclude_defaults=True)
        return data


class LockFile(BaseModel):
    """llmops.lock: one entry per resource address."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: int = Field(default=LOCK_VERSION, alias="lockVersion")
    resources: dict[str, LockEntry] = Field(default_factory=dict)
    # code digest -> what it hashes ({path: sha256, "lib:torch": version}), once per digest an
    # entry's code_version names, so the plan can say which file of a runner changed.
    code: dict[str, dict[str, str]] = Field(default_factory=dict)
    # The llmops version of the apply that last wrote the file (absent in older lock files).
    tool: str = Field(default="", alias="llmops")

    @model_validator(mode="after")
    def _addresses(self) -> LockFile:
        for key, entry in self.resources.items():
            address = Address.parse(key)  # AddressError is a ValueError: reported with the key
            if address.kind != entry.kind:
                raise ValueError(f"{key}: kind {entry.kind!r} does not match the address")
        return self

    def get(self, address: str | Address) -> LockEntry | None:
        return self.resources.get(str(address))

    def outputs(self, address: str | Address) -> Any:
        """The outputs recorded for `address`, or None when it was never applied."""
        entry = self.get(address)
        return entry.outputs if entry else None

    def entries(self, kind: str | None = None) -> Iterator[tuple[Address, LockEntry]]:
        """(address, entry) in address order, optionally of one kind."""
        for key in sorted(self.resources):
            entry = self.resources[key]
            if kind is None or entry.kind == kind:
                yield Address.parse(key), entry

    def record(
        self, address: str | Address, entry: LockEntry, code_files: Mapping[str, str] | None = None
    ) -> None:
        self.resources[str(address)] = entry
        if code_files:
            self.code[entry.code_version] = dict(code_files)

    def code_files(self, code_version: str) -> dict[str, str]:
        return self.code.get(code_version, {})

    def forget(self, address: str | Address) -> LockEntry | None:
        return self.resources.pop(str(address), None)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "lockVersion": self.version,
            "resources": {a: self.resources[a].as_json() for a in sorted(self.resources)},
        }
        if self.tool:
            data["llmops"] = self.tool
        used = {e.code_version for e in self.resources.values()}
        code = {d: self.code[d] for d in sorted(self.code) if d in used}
        if code:  # only the digests an entry names; absent when none recorded files
            data["code"] = code
        return data


class LockFileError(InvalidInput):
    """The lock file exists but cannot be used; carries a diagnostic for the user."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


# -- schema versions ---------------------------------------------------------------------------


def _migrate_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 kept an evaluation's verdicts and their details in two parallel mappings
    (`gates: {name: "pass"|"fail"}`, `gate_details: {name: text}`); 2 keeps one verdict
    object per gate."""
    resources = {}
    for address, entry in data["resources"].items():
        outputs = dict(entry.get("outputs") or {}) if isinstance(entry, dict) else {}
        if isinstance(entry, dict) and "gates" in outputs:
            details = outputs.pop("gate_details", None) or {}
            outputs["gates"] = {
                name: {"passed": verdict == "pass", "detail": str(details.get(name, ""))}
                for name, verdict in (outputs.get("gates") or {}).items()
            }
            entry = {**entry, "outputs": outputs}
        resources[address] = entry
    return {**data, "lockVersion": 2, "resources": resources}


# lockVersion N is read by applying MIGRATIONS[N], MIGRATIONS[N+1], ... up to LOCK_VERSION.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_1_to_2}


def _restore_hint(shown: str) -> str:
    return f"restore it from git ('git checkout -- {shown}')"


def _line_of(text: str, key: str) -> int:
    """The line where `"key":` first appears in the JSON text (1 when not found)."""
    found = re.search(rf'"{re.escape(key)}"\s*:', text)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def parse_lock(text: str, shown: str = LOCK_FILE) -> LockFile:
    """A lock file's text (from disk or a git blob) as a LockFile, migrated to LOCK_VERSION.

    Raises LockFileError with a located diagnostic for invalid JSON, an unknown schema
    version or an entry that does not fit its kind's schema.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LockFileError(
            Diagnostic(
                shown,
                err.lineno,
                err.colno,
                "",
                f"invalid JSON: {err.msg}",
                f"{_restore_hint(shown)} or fix the syntax",
            )
        ) from err
    if not isinstance(data, dict) or not isinstance(data.get("resources"), dict):
        raise LockFileError(
            Diagnostic(
                shown,
                1,
                1,
                "resources",
                "not an llmops lock file: no 'resources' mapping",
                _restore_hint(shown),
            )
        )
    version = data.get("lockVersion")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise LockFileError(
            Diagnostic(
                shown,
                _line_of(text, "lockVersion"),
                1,
                "lockVersion",
                f"unknown lockVersion {version!r}",
                f"this llmops reads lockVersion 1 to {LOCK_VERSION}; {_restore_hint(shown)}",
            )
        )
    if version > LOCK_VERSION:
        raise LockFileError(
            Diagnostic(
                shown,
                _line_of(text, "lockVersion"),
                1,
                "lockVersion",
                f"lockVersion {version} was written by a newer llmops "
                f"(this one reads 1 to {LOCK_VERSION})",
                "upgrade llmops (pip install -U llmops) before running it on this repository",
            )
        )
    while version < LOCK_VERSION:
        data = MIGRATIONS[version](data)
        version = data["lockVersion"]
    for address, entry in data["resources"].items():
        # Outputs first, on their own, so a problem is named by its full path.
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind in OUTPUTS:
            try:
                OUTPUTS[kind].model_validate(entry.get("outputs") or {})
            except ValidationError as err:
                raise _located(err, text, shown, ("resources", address, "outputs")) from err
    try:
        return LockFile.model_validate(data)
    except ValidationError as err:
        raise _located(err, text, shown, ()) from err


def _located(err: ValidationError, text: str, shown: str, prefix: tuple[str, ...]) -> LockFileError:
    """The first problem pydantic found, at the line of the resource it is in."""
    problem = err.errors()[0]
    loc = [*prefix, *(str(p) for p in problem["loc"])]
    address = loc[1] if len(loc) > 1 and loc[0] == "resources" else ""
    return LockFileError(
        Diagnostic(
            shown,
            _line_of(text, address) if address else 1,
            1,
            ".".join(loc),
            problem["msg"].removeprefix("Value error, "),
            _restore_hint(shown),
        )
    )


def read_lock(path: Path) -> LockFile:
    """The lock file at `path`; an empty lock when the file does not exist yet."""
    if not path.exists():
        return LockFile()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LockFileError(Diagnostic(path.name, 1, 1, "", f"cannot read: {err}", "")) from err
    return parse_lock(text, path.name)


def render_lock(lock: LockFile) -> str:
    """Stable text: sorted keys and two-space indents keep git diffs small and reviewable."""
    return json.dumps(lock.as_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, lock: LockFile) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(render_lock(lock), encoding="utf-8")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def lock_from_desired(desired: DesiredState) -> LockFile:
    """A lock that records every desired resource as applied, with no outputs (for tests and
    benchmarks that need a lock in sync with the specs)."""
    lock = LockFile()
    for address in sorted(desired.resources):
        resource = desired.resources[address]
        lock.record(address, LockEntry.of(resource), resource.code_files)
    return lock
