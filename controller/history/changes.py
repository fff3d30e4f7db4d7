"""History, the pure part: field and lock-entry diffs, evidence, lineage and name matching.

Plain functions over documents and lock entries already read; git_reader.py reads them from git."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from controller.load.diagnostics import did_you_mean
from controller.plan.address import Address
from controller.plan.digest import canonical_json
from controller.plan.kinds import DATASET, DEPLOYMENT, EXPERIMENT, KINDS, RUN_KINDS
from controller.plan.planner import flatten
from runners.errors import InvalidInput

_MERGE_PR = re.compile(r"^Merge pull request #(\d+) from ")
_SQUASH_PR = re.compile(r"\(#(\d+)\)\s*$")

Change = Literal["created", "changed", "deleted"]


class HistoryError(InvalidInput):
    """The question cannot be answered (unknown resource, not a repository); says what to do."""


def change_kind(before: object | None, after: object | None) -> Change:
    if before is None:
        return "created"
    return "deleted" if after is None else "changed"


def pr_number(subject: str) -> int | None:
    """The pull request a commit subject names: GitHub merge commits and squash merges."""
    found = _MERGE_PR.match(subject) or _SQUASH_PR.search(subject)
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class FieldChange:
    field: str
    change: Change
    before: Any = None
    after: Any = None


def diff_fields(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[FieldChange]:
    """Flattened fields that differ (`spec.training.lora.r`), sorted by field."""
    old, new = flatten(before or {}), flatten(after or {})
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if key not in old:
            changes.append(FieldChange(key, "created", after=new[key]))
        elif key not in new:
            changes.append(FieldChange(key, "deleted", before=old[key]))
        elif canonical_json(old[key]) != canonical_json(new[key]):
            changes.append(FieldChange(key, "changed", old[key], new[key]))
    return changes


@dataclass(frozen=True)
class EntryDiff:
    """How one lock entry differs between a commit's parent and the commit."""

    address: str
    change: Change
    digest_before: str | None
    digest_after: str | None
    code_version: tuple[str | None, str | None] | None = None
    inputs: list[FieldChange] = field(default_factory=list)
    spec: list[FieldChange] = field(default_factory=list)
    outputs: list[FieldChange] = field(default_factory=list)


def diff_entry(
    address: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> EntryDiff | None:
    """None when the entry is the same (or absent) on both sides."""
    if before is None and after is None:
        return None
    if before is not None and after is not None and canonical_json(before) == canonical_json(after):
        return None
    old, new = before or {}, after or {}
    change = change_kind(before, after)
    code = (old.get("code_version"), new.get("code_version"))
    return EntryDiff(
        address=address,
        change=change,
        digest_before=old.get("digest"),
        digest_after=new.get("digest"),
        code_version=code if change == "changed" and code[0] != code[1] else None,
        inputs=diff_fields(old.get("inputs"), new.get("inputs")),
        spec=diff_fields(old.get("spec"), new.get("spec")),
        outputs=diff_fields(old.get("outputs"), new.get("outputs")),
    )


@dataclass(frozen=True)
class Evidence:
    """Metrics one lock entry records: an experiment run's, a model's, or an evaluation's."""

    address: str
    version: str | None
    metrics: dict[str, Any]
    suite: str | None = None
    gates: dict[str, str] = field(default_factory=dict)


def evidence(address: str, entry: Mapping[str, Any]) -> Evidence | None:
    """The metrics an entry records, or None when it records none."""
    outputs = entry.get("outputs") or {}
    metrics, gates = outputs.get("metrics") or {}, outputs.get("gates") or {}
    if not isinstance(metrics, dict) or not isinstance(gates, dict) or not (metrics or gates):
        return None
    version = outputs.get("subject", outputs.get("version"))
    suite = outputs.get("suite")
    return Evidence(
        address,
        version if isinstance(version, str) else None,
        dict(metrics),
        suite if isinstance(suite, str) else None,
        {str(k): _verdict(v) for k, v in gates.items()},
    )


def _verdict(gate: Any) -> str:
    """'pass' or 'fail' from a recorded gate ({passed, detail} since lockVersion 2)."""
    return "pass" if isinstance(gate, dict) and gate.get("passed") else "fail"


@dataclass(frozen=True)
class Lineage:
    """How a served version was made: the run, its dataset version, the collected windows
    (production-loop snapshots) that dataset took in, and the pull request that added them."""

    run: str
    dataset: str | None
    dataset_version: str | None
    collected: tuple[str, ...] = ()
    approved_in: int | None = None  # the PR that added the collected windows


@dataclass(frozen=True)
class Served:
    """The model version a deployment served, and the metrics the same lock records for it."""

    version: str
    evidence: list[Evidence]
    lineage: list[Lineage] = field(default_factory=list)


def lineage(resources: Mapping[str, Mapping[str, Any]], version: str) -> list[Lineage]:
    """The runs of one lock that produced `version`, each with its dataset and windows."""
    found = []
    for address in sorted(resources):
        entry = resources[address]
        outputs = entry.get("outputs") or {}
        if entry.get("kind") != EXPERIMENT or outputs.get("version") != version:
            continue
        inputs = [Address.try_parse(k) for k in entry.get("inputs") or {}]
        datasets = [str(a) for a in inputs if a is not None and a.kind == DATASET]
        if not datasets:
            found.append(Lineage(address, None, None))
        for dataset in datasets:
            data = resources.get(dataset) or {}
            sources = (data.get("spec") or {}).get("sources") or []
            collected = tuple(
                str(s["path"]) for s in sources if "data/collected/" in str(s.get("path", ""))
            )
            made = (data.get("outputs") or {}).get("version")
            found.append(Lineage(address, dataset, made, collected))
    return found


def served(resources: Mapping[str, Mapping[str, Any]], address: str) -> Served | None:
    """What the Deployment at `address` served according to one lock's resources."""
    entry = resources.get(address)
    if not entry or entry.get("kind") != DEPLOYMENT:
        return None
    version = (entry.get("outputs") or {}).get("version")
    if not isinstance(version, str):
        return None
    found = []
    for other in sorted(resources):
        outputs = resources[other].get("outputs") or {}
        # Evaluations name the version they measured as subject; runs and models as version.
        if version in (outputs.get("subject"), outputs.get("version")) and other != address:
            shown = evidence(other, resources[other])
            if shown is not None:
                found.append(shown)
    return Served(version, found, lineage(resources, version))


@dataclass(frozen=True)
class Target:
    """A resource address and the spec document that declares it."""

    address: str
    parsed: Address = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parsed", Address.parse(self.address))

    @property
    def kind(self) -> str:
        return self.parsed.kind

    @property
    def document(self) -> tuple[str, str]:
        """(kind, metadata.name): runs and evaluations come from their Experiment document."""
        if self.parsed.kind in RUN_KINDS:
            return EXPERIMENT, self.parsed.name
        return self.parsed.kind, self.parsed.name

    def tracks(self, address: str) -> bool:
        """`Experiment/x` also covers its runs `Experiment/x/<run>` (a lock file's key)."""
        return self.parsed.contains(Address.parse(address))


def _after_kind(address: str) -> str:
    """'support-lora/default' for 'Experiment/support-lora/default': what people type."""
    parsed = Address.parse(address)
    return parsed.name if parsed.run is None else f"{parsed.name}/{parsed.run}"


def match_resource(text: str, known: Iterable[str]) -> str | None:
    """The address `text` names among `known`: `Kind/name` in any case, or a unique bare name.

    None when nothing matches; HistoryError when a bare name matches several kinds.
    """
    addresses = set(known)
    kind, _, rest = text.partition("/")
    canonical = {k.lower(): k for k in KINDS}.get(kind.lower())
    if canonical and rest:
        wanted = f"{canonical}/{rest}"
        if wanted in addresses or any(a.startswith(wanted + "/") for a in addresses):
            return wanted
    named = sorted(a for a in addresses if _after_kind(a) == text)
    if len(named) > 1:
        raise HistoryError(
            f"'{text}' names several resources: {', '.join(named)}; "
            f"give the kind, e.g. '{named[0]}'"
        )
    return named[0] if named else None


def unknown_message(text: str, known: Iterable[str]) -> str:
    """Unknown-resource error with the closest address, matched by name for a bare name."""
    addresses = sorted(set(known))
    if "/" in text:
        hint = did_you_mean(text, addresses)
    else:
        by_name = {_after_kind(a): a for a in addresses}
        close = difflib.get_close_matches(text, sorted(by_name), n=1, cutoff=0.6)
        hint = f"did you mean '{by_name[close[0]]}'?" if close else ""
    shown = hint or (
        "addresses look like 'Deployment/<name>' or 'Experiment/<name>/<run>'; "
        "'llmops plan' lists them"
    )
    return f"no resource '{text}' in llmops.lock or specs/, now or in the git history; {shown}"


def landings(parents: Mapping[str, tuple[str, ...]], head: str) -> dict[str, str]:
    """For every commit reachable from `head`, the first-parent commit that brought it in.

    A commit on the first-parent line lands as itself; a commit of a merged branch lands with
    the merge. Merges are visited oldest first, and a branch walk stops at commits already
    placed, so each commit belongs to the first merge that made it reachable.
    """
    line, commit = [], head
    while commit:
        line.append(commit)
        first = parents.get(commit, ())
        commit = first[0] if first else ""
    placed = {c: c for c in line}
    for merge in reversed(line):
        stack = list(parents.get(merge, ())[1:])
        while stack:
            commit = stack.pop()
            if commit in placed:
                continue
            placed[commit] = merge
            stack.extend(parents.get(commit, ()))
    return placed
