"""Report, pull request: the plan, metric tables, curves, dataset and deployment changes as
Markdown (pure: everything it shows is passed in; controller/report/inputs.py gathers it).

A gate result is shown only when it was computed from the specs being proposed: the lock
entry of its Evaluation carries the desired digest. An evaluation the plan still has to run
is shown as pending with the gates it will decide, and the headline never says "passed"
while one is pending.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.observe.leaderboard import (
    Outcomes,
    endpoint_lines,
    judge_lines,
    no_decision_note,
    separation_note,
    shown_ranks,
)
from controller.plan.address import Address
from controller.plan.kinds import DEPLOYMENT
from controller.plan.types import ActionKind, Plan
from controller.report.escape import cell, code, link_target
from controller.state.lockfile import (
    ArenaOutputs,
    DatasetOutputs,
    DeploymentOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    LockEntry,
    ModelOutputs,
)

MARKER = "<!-- llmops-report -->"
SPARKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Curve:
    """A run's loss per step and where its image is (relative to the report)."""

    losses: list[float]
    image: str | None = None
    blob: str | None = None


@dataclass(frozen=True)
class DesiredEvaluation:
    """What a desired Evaluation will measure and judge once applied (from the specs)."""

    suite: str
    subject: str  # "Experiment/<name>/<run>" or "model:<ref>"
    gates: tuple[str, ...] = ()  # "task/metric rule" names it decides; none for a control


@dataclass
class ReportInputs:
    base: str
    head: str
    plan: Plan
    base_lock: Mapping[str, LockEntry]
    head_lock: Mapping[str, LockEntry]
    desired: Mapping[str, str]  # address -> desired digest
    curves: Mapping[str, Curve] = field(default_factory=dict)
    dataset_diffs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    deployments: Mapping[str, str] = field(default_factory=dict)  # address -> model ref
    manifest_diffs: Mapping[str, str] = field(default_factory=dict)  # address -> unified diff
    evaluations: Mapping[str, DesiredEvaluation] = field(default_factory=dict)  # by address
    # address -> provenance of a result this branch shows that an untrusted ref produced
    untrusted: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateOutcome:
    """One gate of one evaluation: passed, failed, or not decided yet (`passed` None)."""

    evaluation: str
    suite: str
    name: str  # "task/metric rule", e.g. "faq-answers/rouge_l max_drop 0.02"
    passed: bool | None
    detail: str

    @property
    def metric(self) -> str:
        """'task/metric'."""
        return self.name.partition(" ")[0]

    @property
    def rule(self) -> str:
        """'max_drop 0.02'."""
        return self.name.partition(" ")[2]

    @property
    def pending(self) -> bool:
        return self.passed is None


def sparkline(values: list[float], width: int = 24) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(finite) > width:  # evenly spaced samples, always keeping the last
        step = (len(finite) - 1) / (width - 1)
        finite = [finite[round(i * step)] for i in range(width)]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(SPARKS[min(7, int((v - low) / span * 7.999))] for v in finite)


def fmt(value: Any, signed: bool = False) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "–" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    text = f"{value:+.4g}" if signed else f"{value:.4g}"
    return text


def applied(inputs: ReportInputs, address: str) -> LockEntry | None:
    """The result of the specs being proposed: the head lock's entry when it records the
    desired digest, else the base's when the base already has it (unchanged here)."""
    wanted = inputs.desired.get(address)
    for lock in (inputs.head_lock, inputs.base_lock):
        entry = lock.get(address)
        if entry is not None and entry.digest == wanted:
            return entry
    return None


def _of_kind(inputs: ReportInputs, kind: str) -> list[str]:
    return sorted(a for a in inputs.desired if Address.parse(a).kind == kind)


def pending_evaluations(inputs: ReportInputs) -> list[str]:
    """Desired evaluations with no result for the proposed specs: `llmops apply` has yet to
    run them (the plan lists each as create or reevaluate, "not yet" applied)."""
    return [
        a
        for a in _of_kind(inputs, "Evaluation")
        if not isinstance(getattr(applied(inputs, a), "outputs", None), EvaluationOutputs)
    ]


def gate_outcomes(inputs: ReportInputs) -> list[GateOutcome]:
    """Every gate of every desired evaluation, by evaluation then gate: the verdicts of
    results computed from the proposed specs, and the gates of pending evaluations as not
    decided (never a verdict from another digest)."""
    pending = set(pending_evaluations(inputs))
    out = []
    for address in _of_kind(inputs, "Evaluation"):
        if address in pending:
            planned = inputs.evaluations.get(address)
            if planned is not None:
                out += [
                    GateOutcome(address, planned.suite, name, None, "evaluation pending")
                    for name in sorted(planned.gates)
                ]
            continue
        entry = applied(inputs, address)
        assert entry is not None and isinstance(entry.outputs, EvaluationOutputs)
        outputs = entry.outputs
        for name, verdict in sorted(outputs.gates.items()):
            out.append(GateOutcome(address, outputs.suite, name, verdict.passed, verdict.detail))
    for address in _of_kind(inputs, "Arena"):
        entry = applied(inputs, address)
        if entry is not None and isinstance(entry.outputs, ArenaOutputs):
            arena = Address.parse(address).name
            out += [
                GateOutcome(address, arena, name, verdict.passed, verdict.detail)
                for name, verdict in sorted(entry.outputs.gates.items())
            ]
    return out


def headline(inputs: ReportInputs) -> str:
    """❌ when a decided gate failed; ⏳ while an evaluation is pending (then never "passed");
    ✅ only when every gate was decided on the proposed specs and passed."""
    gates = gate_outcomes(inputs)
    decided = [g for g in gates if not g.pending]
    failed = [g for g in decided if not g.passed]
    pending = pending_evaluations(inputs)
    parts = []
    if failed:
        parts.append(f"❌ {len(failed)} of {len(decided)} gate(s) failed")
    if pending:
        undecided = len(gates) - len(decided)
        parts.append(
            f"⏳ {len(pending)} evaluation(s) pending: {undecided} gate(s) not yet decided"
        )
    if parts:
        return "; ".join(parts)
    return f"✅ all {len(gates)} gate(s) passed" if gates else "no gates evaluated"


def _plan_section(inputs: ReportInputs) -> list[str]:
    the_plan = inputs.plan
    counts = the_plan.counts()
    changed = [a for a in the_plan.actions if a.kind != ActionKind.NOOP]
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n and k != "noop")
    lines = [
        "### Plan",
        "",
        f"{summary or 'no changes'}; {counts.get('noop', 0)} unchanged "
        f"(specs of {code(inputs.head, table=False)} against the lock file of "
        f"{code(inputs.base, table=False)}).",
        "",
    ]
    if not changed:
        return lines
    lines += ["| action | resource | reason | applied here |", "|---|---|---|---|"]
    for action in changed:
        done = (
            "yes"
            if applied(inputs, action.address)
            else ("–" if action.kind == ActionKind.DELETE else "not yet")
        )
        lines.append(
            f"| {cell(action.kind)} | {code(action.address)} | {cell(action.reason)} | {done} |"
        )
    return [*lines, ""]


def _pending_evaluation(inputs: ReportInputs, address: str) -> list[str]:
    planned = inputs.evaluations.get(address)
    lines = [f"#### {code(address, table=False)}: ⏳ pending", ""]
    if planned is None:
        return [*lines, "Not evaluated on these specs yet (`llmops apply` runs it).", ""]
    lines += [
        "Not evaluated on these specs yet: `llmops apply` evaluates "
        f"{code(planned.subject, table=False)} "
        f"with suite {code(planned.suite, table=False)}"
        + (", then these gates are decided:" if planned.gates else "; it decides no gates."),
        "",
    ]
    if planned.gates:
        lines += ["| gate | result |", "|---|---|"]
        lines += [f"| {cell(name)} | ⏳ pending |" for name in sorted(planned.gates)]
        lines.append("")
    return lines


def _evaluation_section(inputs: ReportInputs) -> list[str]:
    lines: list[str] = []
    pending = set(pending_evaluations(inputs))
    for address in _of_kind(inputs, "Evaluation"):
        if address in pending:
            lines += _pending_evaluation(inputs, address)
            continue
        entry = applied(inputs, address)
        if entry is None or not isinstance(entry.outputs, EvaluationOutputs):
            continue
        base_entry = inputs.base_lock.get(address)
        if base_entry is not None and base_entry.digest == entry.digest:
            continue  # unchanged by this pull request
        outputs = entry.outputs
        gates = outputs.gates
        title = f"#### {code(address, table=False)}: {cell(outputs.subject)}"
        if outputs.baseline:
            title += f" against {cell(outputs.baseline)}"
        lines += [title, "", f"Suite {code(outputs.suite, table=False)}.", ""]
        comparison = outputs.comparison
        if comparison:
            lines += [
                "| metric | baseline | candidate | difference | 95% interval | gate |",
                "|---|---:|---:|---:|---|---|",
            ]
            for row in comparison:
                verdicts = [
                    ("✅ " if v.passed else "❌ ") + cell(name.partition(" ")[2])
                    for name, v in sorted(gates.items())
                    if name.partition(" ")[0] == row.metric
                ]
                lines.append(
                    f"| {cell(row.metric)} | {fmt(row.baseline)} | {fmt(row.candidate)} | "
                    f"{fmt(row.difference, True)} | "
                    f"[{fmt(row.low, True)}, {fmt(row.high, True)}] | "
                    f"{'<br>'.join(verdicts) or '–'} |"
                )
        else:
            lines += ["| metric | value |", "|---|---:|"]
            for metric, value in sorted(outputs.metrics.items()):
                lines.append(f"| {cell(metric)} | {fmt(value)} |")
        if outputs.endpoint is not None:  # an endpoint the suite names: latency, tokens
            name = str(outputs.subject).removeprefix("endpoint:")
            for line in endpoint_lines({name: outputs.endpoint}):
                lines += ["", cell(line, 1000)]
        failed = outputs.failed_gates
        if gates:
            lines += [
                "",
                f"Gates: {len(gates) - len(failed)} passed, {len(failed)} failed"
                + (f" ({cell(', '.join(failed))})." if failed else "."),
            ]
        before = base_entry.outputs if base_entry is not None else None
        if isinstance(before, EvaluationOutputs) and before.metrics:
            shared = sorted(set(before.metrics) & set(outputs.metrics))[:6]
            if shared:
                changes = ", ".join(
                    f"{cell(m)} {fmt(before.metrics[m])} → {fmt(outputs.metrics[m])}"
                    for m in shared
                )
                lines += [
                    "",
                    f"On {code(inputs.base, table=False)} ({cell(before.subject)}): {changes}.",
                ]
        lines.append("")
    return ["### Evaluations", "", *lines] if lines else []


def _arena_section(inputs: ReportInputs) -> list[str]:
    """Each arena's leaderboard with intervals, and how ratings moved since the base."""
    lines: list[str] = []
    for address in _of_kind(inputs, "Arena"):
        entry = applied(inputs, address)
        if entry is None or not isinstance(entry.outputs, ArenaOutputs):
            if address in inputs.desired:
                lines += [
                    f"#### {code(address, table=False)}",
                    "",
                    "⏳ not run yet: `llmops apply` runs it.",
                    "",
                ]
            continue
        outputs = entry.outputs
        base_entry = inputs.base_lock.get(address)
        before = (
            {s.model: s for s in base_entry.outputs.leaderboard}
            if base_entry is not None and isinstance(base_entry.outputs, ArenaOutputs)
            else {}
        )
        votes = ", ".join(f"{n} {cell(kind)}" for kind, n in outputs.votes.items()) or "no"
        board = outputs.leaderboard
        ranks = [s.rank for s in board]
        outcomes = (
            Outcomes(
                outputs.decided,
                sum(outputs.votes.values()) - outputs.decided,
                0,
                outputs.unparseable,
            )
            if outputs.decided is not None
            else None
        )
        if outcomes is not None:
            counted = (
                f"{outputs.battles} battle(s), {votes} vote(s): {outputs.decided} decided, "
                f"{outcomes.ties} tie(s) or both bad"
            )
        else:
            counted = f"{outputs.battles} battle(s), {votes} vote(s)"
        lines += [
            f"#### {code(address, table=False)}",
            "",
            counted
            + (f", {outputs.unparseable} unparseable verdict(s)" if outputs.unparseable else "")
            + ". Ranks differ only where the 95% intervals do not overlap.",
            "",
        ]
        note = (no_decision_note(outcomes) if outcomes is not None else None) or separation_note(
            ranks, outputs.decided
        )
        if note:
            lines += [f"> ⚠️ {note}", ""]
        lines += [
            "| rank | model | rating | 95% interval | battles | on base |",
            "|---:|---|---:|---|---:|---:|",
        ]
        for s, rank in zip(board, shown_ranks(ranks, outputs.decided), strict=True):
            was = before.get(s.model)
            lines.append(
                f"| {rank or '–'} | {cell(s.model)} | {s.rating:.0f} | "
                f"[{s.lower:.0f}, {s.upper:.0f}] | "
                f"{s.battles} | {f'{was.rating:.0f}' if was else 'new'} |"
            )
        for name, verdict in sorted(outputs.gates.items()):
            lines.append("")
            lines.append(
                f"{'✅' if verdict.passed else '❌'} {cell(name)}: {cell(verdict.detail, 1000)}"
            )
        judged = judge_lines(outputs.judge)
        if judged:
            lines += ["", " ".join(cell(line, 1000) for line in judged)]
        for line in endpoint_lines(outputs.endpoints):
            lines += ["", cell(line, 1000)]
        lines.append("")
    return ["### Arenas", "", *lines] if lines else []


def _scan_section(inputs: ReportInputs) -> list[str]:
    """Brain scans of the trained versions: where fine-tuning changed the weights, alarms."""
    lines = []
    for address in _of_kind(inputs, "Experiment"):
        entry = applied(inputs, address)
        outputs = entry.outputs if entry is not None else None
        if not isinstance(outputs, ExperimentOutputs) or outputs.scan is None:
            continue
        scan = outputs.scan
        errors = [a for a in scan.alarms if a.startswith("error")]
        mark = "❌" if errors else ("⚠️" if scan.alarms else "✅")
        layers = ", ".join(str(n) for n in scan.layers_changed_most) or "–"
        lines.append(
            f"| {code(address)} | {cell(outputs.version)} vs {cell(scan.against or '–')} | "
            f"{cell(', '.join(scan.modules_changed) or 'none')} | {cell(layers)} | "
            f"{mark} {len(scan.alarms)} |"
        )
        lines += [f"|  | | | | {cell(alarm)} |" for alarm in scan.alarms[:5]]
    if not lines:
        return []
    return [
        "### Brain scans",
        "",
        "| run | version | modules changed | layers changed most | alarms |",
        "|---|---|---|---|---|",
        *lines,
        "",
        "Heatmaps and per-layer figures: `llmops inspect <version>`.",
        "",
    ]


def _training_section(inputs: ReportInputs) -> list[str]:
    rows, images = [], []
    for address in _of_kind(inputs, "Experiment"):
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or not isinstance(entry.outputs, ExperimentOutputs):
            continue
        if base_entry is not None and base_entry.digest == entry.digest:
            continue
        outputs = entry.outputs
        metrics = outputs.metrics
        curve = inputs.curves.get(address)
        rows.append(
            f"| {code(address)} | {cell(outputs.version or '–')} | {fmt(metrics.get('steps'))} | "
            f"{fmt(metrics.get('final_loss'))} | {fmt(metrics.get('final_eval_loss'))} | "
            f"{sparkline(curve.losses) if curve else '–'} |"
        )
        if curve and curve.image:
            where = f" (artifact store: {code(curve.blob, table=False)})" if curve.blob else ""
            images.append(f"![loss curves of {cell(address)}]({link_target(curve.image)}){where}")
    if not rows:
        return []
    return [
        "### Training",
        "",
        "| run | registered | steps | final loss | final eval loss | loss curve |",
        "|---|---|---:|---:|---:|---|",
        *rows,
        "",
        *images,
        *([""] if images else []),
    ]


def _dataset_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for address in _of_kind(inputs, "Dataset"):
        entry = applied(inputs, address)
        base_entry = inputs.base_lock.get(address)
        if entry is None or not isinstance(entry.outputs, DatasetOutputs):
            continue
        if base_entry is not None and base_entry.digest == entry.digest:
            continue
        after = entry.outputs
        before = base_entry.outputs if base_entry is not None else DatasetOutputs()
        assert isinstance(before, DatasetOutputs)
        splits = after.rows
        old_splits = before.rows
        sizes = " / ".join(
            f"{cell(name)} {old_splits.get(name, 0)} → {count}"
            if old_splits
            else f"{cell(name)} {count}"
            for name, count in splits.items()
        )
        diff = inputs.dataset_diffs.get(address) or {}
        change = (
            f"+{diff['added']} −{diff['removed']} ~{diff['changed']}"
            if diff
            else ("new" if base_entry is None else "–")
        )
        removed = ", ".join(f"{cell(k)} {v}" for k, v in sorted(after.removed.items()))
        short = after.version[7:19]
        old_short = before.version[7:19]
        rows.append(
            f"| {code(address)} | {cell(old_short or '–')} → {cell(short)} | {sizes} | {change} | "
            f"{removed or '–'} |"
        )
    if not rows:
        return []
    return [
        "### Datasets",
        "",
        "| dataset | version | rows | rows added/removed/changed | dropped by steps |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def _deployment_section(inputs: ReportInputs) -> list[str]:
    rows = []
    for action in inputs.plan.actions:
        if action.resource_kind != DEPLOYMENT or action.kind == ActionKind.NOOP:
            continue
        entry = inputs.base_lock.get(action.address)
        before = entry.outputs if entry is not None else DeploymentOutputs()
        assert isinstance(before, DeploymentOutputs)
        rows.append(
            f"| {code(action.address)} | {cell(action.kind)} | {cell(before.version or '–')} | "
            f"{cell(_after_merge(inputs, action.address))} | {cell(before.target or '–')} |"
        )
    if not rows:
        return []
    details = []
    for action in inputs.plan.actions:
        if action.resource_kind != DEPLOYMENT or action.kind == ActionKind.NOOP:
            continue
        changes = [c for c in action.changes if c.startswith("spec ")]
        if changes:
            details += [
                f"{code(action.address, table=False)}: " + cell("; ".join(changes), 1000),
                "",
            ]
        diff = inputs.manifest_diffs.get(action.address)
        if diff:
            details += [
                "<details><summary>KServe manifests</summary>",
                "",
                _fence(diff) + "diff",
                diff.rstrip("\n"),
                _fence(diff),
                "",
                "</details>",
                "",
            ]
    return [
        "### Deployments",
        "",
        "Deployments roll out after merge, when `llmops apply` runs on the main branch.",
        "",
        "| deployment | action | serving now | after merge | target |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *details,
    ]


def _after_merge(inputs: ReportInputs, address: str) -> str:
    """The version a deployment will serve: an alias is shown with what this branch moved it to."""
    ref = inputs.deployments.get(address)
    if not ref:
        return "as specified"
    name, _, selector = ref.partition("@")
    model = applied(inputs, str(Address("Model", name)))
    outputs = model.outputs if model is not None else None
    if selector and isinstance(outputs, ModelOutputs) and selector in outputs.aliases:
        return f"{ref} = {outputs.version}"
    return ref


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks in `text` (at least three)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _trust_section(inputs: ReportInputs) -> list[str]:
    """Results from a ref main does not trust: shown here, never promoted or deployed by main
    as they are (docs/architecture.md, "Trust boundary")."""
    if not inputs.untrusted:
        return []
    lines = [
        "> ⚠️ **Computed on a ref main does not trust.** These results are shown for review "
        "only: after the merge, main's apply recomputes them before it promotes or deploys "
        "anything (it reuses one only when its code digest and inputs equal main's and it "
        "came from a commit main contains, with the same runner code).",
        ">",
    ]
    lines += [
        f"> - {code(address, table=False)}: {cell(why, 1000)}"
        for address, why in sorted(inputs.untrusted.items())
    ]
    return [*lines, ""]


def render_report(inputs: ReportInputs) -> str:
    lines = [
        MARKER,
        f"## llmops: {code(inputs.base, table=False)} → {code(inputs.head, table=False)}",
        "",
        f"**{headline(inputs)}**",
        "",
        *_trust_section(inputs),
        *_plan_section(inputs),
        *_evaluation_section(inputs),
        *_arena_section(inputs),
        *_training_section(inputs),
        *_scan_section(inputs),
        *_dataset_section(inputs),
        *_deployment_section(inputs),
    ]
    return "\n".join(lines).rstrip() + "\n"
