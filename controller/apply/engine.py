"""Apply, engine: carry out a plan in dependency order, recording each result in llmops.lock.

Every step is idempotent by digest (a pulled model, a prepared dataset version, a trained
run, stored evaluation results), and the lock file is rewritten after each action, so an
apply killed at any point converges when run again: finished work is found and reused,
unfinished work is redone (training resumes from its last checkpoint).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from controller import installed_version
from controller.api.evaluation import EvaluationSpec
from controller.api.experiment import ExperimentSpec, InspectOptions
from controller.api.model import ExperimentSource, ModelSpec
from controller.api.pipeline import PipelineSpec
from controller.apply.arena import ArenaRunner
from controller.apply.context import ApplyStep
from controller.apply.deploy import Deployer
from controller.apply.evaluate import Evaluator
from controller.apply.hooks import ApplyHooks, ConsoleHooks
from controller.apply.inspect import Inspector, base_of, read_probes
from controller.apply.prepare import Preparer
from controller.apply.pull import pull_model
from controller.apply.train import Trainer
from controller.load.desired import Loaded
from controller.observe.leaderboard import (
    no_decision_note,
    outcomes_of,
    separation_note,
    shown_ranks,
)
from controller.plan.address import Address
from controller.plan.kinds import DEPLOYMENT
from controller.plan.types import Action, ActionKind, Plan
from controller.report.terminal import gate_line
from controller.state.lockfile import (
    ArenaOutputs,
    ComparisonRow,
    DatasetOutputs,
    EndpointUsage,
    EvalSuiteOutputs,
    EvaluationOutputs,
    ExperimentOutputs,
    GateVerdict,
    LockEntry,
    ModelOutputs,
    Outputs,
    PipelineOutputs,
    ScanSummary,
    read_lock,
    write_lock,
)
from controller.state.provenance import TrustContext
from controller.state.registry.store import Registry
from runners.errors import LlmopsError
from runners.evaluate.compare import GateResult
from runners.evaluate.run import EvalError

Status = Literal["applied", "recorded", "skipped", "failed"]


class GateFailed(LlmopsError):
    """An evaluation's gates failed, so what depends on it (a promotion) is not applied."""


@dataclass
class ActionResult:
    address: Address
    action: str
    status: Status
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.address, Address):
            self.address = Address.parse(self.address)

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "action": self.action,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "outputs": self.outputs,
            "message": self.message,
        }


@dataclass
class ApplyReport:
    results: list[ActionResult] = field(default_factory=list)

    @property
    def failed(self) -> list[ActionResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def applied(self) -> list[ActionResult]:
        return [r for r in self.results if r.status == "applied"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "applied": len(self.applied),
            "failed": len(self.failed),
            "results": [r.as_dict() for r in self.results],
        }


def round_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Six significant digits: enough to compare, few enough to keep lock diffs readable."""
    return {
        k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in sorted(metrics.items())
    }


Handler = Callable[["Applier", Address], Outputs]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that applies resources of `kind` (one per kind, looked up by kind)."""

    def register(handler: Handler) -> Handler:
        HANDLERS[kind] = handler
        return handler

    return register


class Applier(ApplyStep):
    """Runs the actions of one plan against one repository's state."""

    def __init__(
        self,
        loaded: Loaded,
        registry: Registry,
        console: Console,
        lock_path: Path,
        skip_deploy: bool = False,
        hooks: ApplyHooks | None = None,
        skip_promote: bool = False,
        trust: TrustContext | None = None,
    ) -> None:
        super().__init__(loaded, registry, console)
        self.hooks: ApplyHooks = hooks or ConsoleHooks(console)
        self.trust = trust
        self.lock_path = lock_path
        self.skip_deploy = skip_deploy
        self.skip_promote = skip_promote
        self.lock = read_lock(lock_path)
        self.lock.tool = installed_version()  # recorded with the next write
        self.evaluator = Evaluator(loaded, registry, console)
        self.trainer = Trainer(loaded, registry, console)
        self.preparer = Preparer(loaded, registry, console)
        for step in (self.evaluator, self.trainer, self.preparer):
            step.trust = trust
        self._deployer: Any = None
        self._outputs: dict[Address, Outputs] = {}

    # -- the loop ----------------------------------------------------------------------

    def apply(self, the_plan: Plan) -> ApplyReport:
        report = ApplyReport()
        blocked: set[Address] = set()
        changed: set[Address] = set()
        for action in the_plan.actions:
            address = action.address
            # A deployment naming `model@alias` has no digest input for the alias: when this
            # apply moved what it depends on, it is rolled out again (a no-op if unchanged).
            moved = address.kind == DEPLOYMENT and bool(
                changed & set(self._dependencies(action.address))
            )
            if action.kind == ActionKind.DELETE:
                result = self._delete(action)
            elif action.kind == ActionKind.NOOP and self._recorded(action) and not moved:
                continue
            elif self.skip_deploy and address.kind == DEPLOYMENT:
                result = ActionResult(
                    action.address, str(action.kind), "skipped", message="--skip-deploy"
                )
            elif self.skip_promote and self._promotes(address) and not self._promoted(address):
                result = ActionResult(
                    action.address,
                    str(action.kind),
                    "skipped",
                    message="a promotion moves aliases after the merge",
                )
            elif blocked & set(self._dependencies(action.address)):
                failed_dep = sorted(blocked & set(self._dependencies(action.address)))[0]
                result = ActionResult(
                    action.address,
                    str(action.kind),
                    "skipped",
                    message=f"{failed_dep} did not apply",
                )
            else:
                result = self._run(action, address)
            if result.status in ("failed", "skipped"):
                blocked.add(action.address)
            elif result.status == "applied":
                changed.add(action.address)
            report.results.append(result)
            self.hooks.post_action(result)
        return report

    def _promotes(self, address: str) -> bool:
        """A Model an experiment produces: applying it moves its aliases (a promotion)."""
        resource = self.desired.resources.get(address)
        return resource is not None and isinstance(
            getattr(resource.spec, "source", None), ExperimentSource
        )

    def _promoted(self, address: Address) -> bool:
        """The promotion is already where the spec wants it: the run's version, as this apply
        recorded its Experiment, carries every alias the Model names. Recording the Model then
        moves nothing (a pipeline's branch on a repository whose lock main has not committed
        yet), and what builds on it (an experiment from `model@champion`) can be recorded too."""
        resource = self.desired.resources[str(address)]
        spec = resource.spec_as(ModelSpec)
        assert isinstance(spec.source, ExperimentSource)
        experiment = Address("Experiment", spec.source.experiment, spec.source.run)
        entry = self.lock.get(experiment)
        run = self._outputs.get(experiment) or (entry.outputs if entry else None)
        if not isinstance(run, ExperimentOutputs) or "@" not in run.version:
            return False
        name, number = run.version.rsplit("@", 1)
        return name == address.name and all(
            (found := self.registry.find(f"{name}@{alias}")) is not None
            and str(found.number) == number
            for alias in spec.aliases
        )

    def _dependencies(self, address: str) -> tuple[str, ...]:
        resource = self.desired.resources.get(address)
        return resource.depends_on if resource else ()

    def _recorded(self, action: Action) -> bool:
        """A noop whose lock entry is current needs nothing; otherwise its outputs are recorded."""
        entry = self.lock.get(action.address)
        return entry is not None and entry.digest == action.after

    def _run(self, action: Action, address: Address) -> ActionResult:
        handler = HANDLERS[address.kind]
        started = time.monotonic()
        verb = "recording" if action.kind == ActionKind.NOOP else str(action.kind)
        self.hooks.pre_action(action.address, verb)
        fault_point(f"before:{action.address}")
        try:
            outputs = handler(self, address)
        except LlmopsError as err:
            return ActionResult(
                action.address,
                str(action.kind),
                "failed",
                time.monotonic() - started,
                message=str(err),
            )
        self._outputs[address] = outputs
        fault_point(f"after:{action.address}")
        self._record(address, outputs)
        status: Status = "recorded" if action.kind == ActionKind.NOOP else "applied"
        seconds = time.monotonic() - started
        return ActionResult(
            action.address,
            str(action.kind),
            status,
            seconds,
            outputs.model_dump(mode="json", exclude_defaults=True),
        )

    def _record(self, address: Address, outputs: Outputs) -> None:
        """Persist after every action: this is what makes apply restartable."""
        resource = self.desired.resources[str(address)]
        self.lock.record(address, LockEntry.of(resource, outputs), resource.code_files)
        write_lock(self.lock_path, self.lock)

    def _delete(self, action: Action) -> ActionResult:
        started = time.monotonic()
        address = action.address
        self.hooks.pre_action(str(address), "delete")
        entry = self.lock.get(address)
        if address.kind == DEPLOYMENT and entry is not None:
            self.deployer.stop(address.name, entry)
        self.lock.forget(address)
        write_lock(self.lock_path, self.lock)
        return ActionResult(action.address, "delete", "applied", time.monotonic() - started)

    # -- what handlers share -------------------------------------------------------------

    def subject_ref(self, subject: str) -> str:
        """The model version an evaluation's subject names: `model:<ref>` or a run's address."""
        if subject.startswith("model:"):
            return subject.removeprefix("model:")
        run = Address.parse(subject)
        return self.trainer.train(run.experiment, str(run.run)).ref

    def control_ref(self, experiment: str) -> str | None:
        """What the experiment's runs are compared with: a run, a named model or the base."""
        runs = sorted(
            r.address for r, _ in self.desired.specs(ExperimentSpec) if r.name == experiment
        )
        if not runs:
            return None
        spec = self.desired.resources[runs[0]].spec_as(ExperimentSpec)
        if spec.control and spec.control.run:
            return self.trainer.train(experiment, spec.control.run).ref
        return (spec.control.model if spec.control else None) or spec.base_model

    @property
    def deployer(self) -> Any:
        if self._deployer is None:
            self._deployer = Deployer(self.loaded, self.registry, self.console)
            self._deployer.progress = self.hooks
            self._deployer.trust = self.trust
        return self._deployer


# -- one handler per kind ----------------------------------------------------------------


@handles("Model")
def apply_model(applier: Applier, address: Address) -> ModelOutputs:
    resource = applier.desired.resources[str(address)]
    spec = resource.spec_as(ModelSpec)
    if not isinstance(spec.source, ExperimentSource):
        outcome = pull_model(
            resource, applier.registry, applier.root, applier.console, evaluator=applier.evaluator
        )
        return ModelOutputs(version=outcome.ref, **quantize_gate_outputs(outcome.version.extra))
    # A model an experiment produces: promote the run's version once its gates pass.
    run = Address("Experiment", spec.source.experiment, spec.source.run)
    trained = applier.trainer.train(run.experiment, str(run.run))
    evaluation = run.sibling("Evaluation")
    if str(evaluation) in applier.desired.resources:
        outputs = apply_evaluation(applier, evaluation)
        if outputs.failed_gates:
            raise GateFailed(
                f"{trained.ref} ({run}) failed gate(s) {', '.join(outputs.failed_gates)}; "
                f"aliases {spec.aliases} stay where they are"
            )
    aliases = list(spec.aliases)
    for alias in aliases:
        applier.registry.set_alias(trained.version.model.name, alias, trained.version.number)
        applier.console.print(f"  {trained.version.model.name}@{alias} -> {trained.ref}")
    return ModelOutputs(version=trained.ref, aliases=aliases)


def quantize_gate_outputs(extra: dict[str, Any]) -> dict[str, Any]:
    """A quantized version's lineage and quality gate for its lock entry, from what
    controller/apply/quantize.py registered; nothing for any other version."""
    gate = extra.get("quality_gate")
    if not extra.get("quantized_from") or not isinstance(gate, dict):
        return {}
    metrics = {
        k: gate[k]
        for k in ("perplexity_increase", "token_agreement")
        if isinstance(gate.get(k), int | float)
    }
    judged = ((gate.get("suite") or {}).get("gates")) or []
    return {
        "quantized_from": extra["quantized_from"],
        "metrics": metrics,
        "gates": verdicts(GateResult(**g) for g in judged),
    }


@handles("Dataset")
def apply_dataset(applier: Applier, address: Address) -> DatasetOutputs:
    outcome = applier.preparer.prepare(address.name)
    stats = outcome.stats or {}
    return DatasetOutputs(
        version=outcome.version.version,
        rows=dict(stats.get("rows") or {}),
        removed={
            step["step"]: step["removed"] for step in stats.get("steps") or [] if step["removed"]
        },
    )


@handles("EvalSuite")
def apply_evalsuite(applier: Applier, address: Address) -> EvalSuiteOutputs:
    """A suite runs nothing by itself: applying it checks its task data is there."""
    suite = applier.evaluator.suite(address.name)
    missing = [str(p) for p in applier.evaluator.task_data(suite).values() if not p.exists()]
    if missing:
        raise EvalError(f"suite '{address.name}' task data missing: {', '.join(missing)}")
    return EvalSuiteOutputs(tasks=len(suite.get("tasks") or []))


@handles("Experiment")
def apply_experiment(applier: Applier, address: Address) -> ExperimentOutputs:
    outcome = applier.trainer.train(address.experiment, str(address.run))
    result = outcome.result or {}
    metrics = {
        k: result[k]
        for k in ("final_loss", "final_eval_loss", "steps", "tokens_per_s")
        if isinstance(result.get(k), int | float)
    }
    options = applier.desired.resources[str(address)].spec_as(ExperimentSpec).inspect
    scan = scan_version(applier, outcome.version, options) if options else None
    return ExperimentOutputs(version=outcome.ref, metrics=round_metrics(metrics), scan=scan)


def scan_version(applier: Applier, version: Any, options: InspectOptions) -> ScanSummary:
    """The brain scan an experiment asks for: the trained version against its base."""
    probes = read_probes(applier.root / options.probes) if options.probes else None
    outcome = Inspector(applier.registry, applier.console).scan(
        version,
        base_of(applier.registry, version),
        probes,
        {
            **options.model_dump(include={"top_k", "spread_k", "weightwatcher"}),
            # an untrusted ref's scan is stored apart (controller/apply/context.py namespace)
            **({"namespace": applier.namespace} if applier.namespace else {}),
        },
    )
    summary = outcome.summary()
    applier.console.print(
        f"  brain scan ({outcome.status}): changed "
        f"{', '.join(summary.modules_changed) or 'nothing'}"
        + (f", most in layers {summary.layers_changed_most}" if summary.layers_changed_most else "")
        + f"; {len(summary.alarms)} alarm(s); {outcome.folder}"
    )
    for alarm in summary.alarms:
        applier.console.print(f"    {alarm}")
    return summary


@handles("Evaluation")
def apply_evaluation(applier: Applier, address: Address) -> EvaluationOutputs:
    done = applier._outputs.get(address)  # already evaluated for a promotion in this apply
    if isinstance(done, EvaluationOutputs):
        return done
    spec = applier.desired.resources[str(address)].spec_as(EvaluationSpec)
    suite = spec.suite
    if spec.endpoint is not None:  # an endpoint the suite names: over its API, cached
        folder, summary = applier.evaluator.run_suite_endpoint(suite, spec.endpoint)
        usage = summary["endpoint"]
        applier.console.print(
            f"  endpoint {usage['name']} ({usage['model']} at {usage['endpoint']}): "
            f"{usage['requests']} request(s), {usage['retries']} retried, "
            f"{usage['cached']} of {usage['answers']} from the cache; {folder}"
        )
        return EvaluationOutputs(
            subject=str(spec.subject),
            suite=suite,
            metrics=round_metrics(summary["metrics"]),
            endpoint=EndpointUsage(
                endpoint=usage["endpoint"],
                model=usage["model"],
                settings={
                    **usage["settings"],
                    **({"serves": usage["serves"]} if usage.get("serves") else {}),
                    **({"api_key_env": usage["api_key_env"]} if usage.get("api_key_env") else {}),
                },
                answers=usage["answers"],
                latency_s=usage["latency_s"],
                latency_p95_s=usage["latency_p95_s"],
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                requests=usage["requests"],
                retries=usage["retries"],
            ),
        )
    subject = applier.subject_ref(spec.subject)
    control = None if address.run == "control" else applier.control_ref(address.experiment)
    # A Kubernetes Job when the experiment trains in one (the Evaluation's spec carries it).
    executor = spec.executor.model_dump() if spec.executor else None
    if control is None or control == subject:
        outcome = applier.evaluator.run(suite, subject, executor=executor)
        return EvaluationOutputs(
            subject=outcome.ref, suite=suite, metrics=round_metrics(outcome.summary["metrics"])
        )
    comparison = applier.evaluator.compare(suite, control, subject, executor=executor)
    candidate = applier.evaluator.run(suite, subject, executor=executor)
    outputs = EvaluationOutputs(
        subject=comparison.candidate,
        suite=suite,
        baseline=comparison.baseline,
        metrics=round_metrics(candidate.summary["metrics"]),
        comparison=[
            ComparisonRow.model_validate(
                round_metrics({k: v for k, v in c.as_dict().items() if k != "flipped"})
            )
            for c in comparison.metrics
        ],
        gates=verdicts(comparison.gates),
    )
    for gate in comparison.gates:
        applier.console.print("  " + gate_line(gate_name(gate), gate.passed, gate.detail))
    applier._outputs[address] = outputs
    return outputs


@handles("Arena")
def apply_arena(applier: Applier, address: Address) -> ArenaOutputs:
    result = ArenaRunner(applier.loaded, applier.registry, applier.console).run(address.name)
    applier.console.print(
        f"  {len(result.battles)} battle(s): {result.generated} answer(s) generated, "
        f"{result.judged} judged, {result.unparseable} unparseable verdict(s)"
    )
    outputs = result.outputs()
    standings = result.boards["all"].standings
    ranks = [s.rank for s in standings]
    outcomes = outcomes_of(standings, outputs.unparseable)
    applier.console.print(f"  {outcomes.line()}", markup=False)
    for standing, rank in zip(standings, shown_ranks(ranks, outcomes.decided), strict=True):
        applier.console.print(
            f"  {'#' + rank if rank else '–'} {standing.model}: {standing.rating:.0f} "
            f"[{standing.lower:.0f}, {standing.upper:.0f}] over {standing.battles} battle(s)",
            markup=False,
        )
    note = no_decision_note(outcomes) or separation_note(ranks, outcomes.decided)
    if note:
        applier.console.print(f"  {note}", markup=False)
    for name, gate in result.gates.items():
        applier.console.print("  " + gate_line(name, gate.passed, gate.detail))
    if outputs.failed_gates:
        applier._record(address, outputs)  # the report shows the leaderboard that failed
        raise GateFailed(f"arena '{address.name}' failed gate(s) {', '.join(outputs.failed_gates)}")
    return outputs


@handles("Deployment")
def apply_deployment(applier: Applier, address: Address) -> Outputs:
    return applier.deployer.deploy(address.name)


@handles("Pipeline")
def apply_pipeline(applier: Applier, address: Address) -> PipelineOutputs:
    spec = applier.desired.resources[str(address)].spec_as(PipelineSpec)
    return PipelineOutputs(steps=[s.step for s in spec.steps])


def fault_point(point: str) -> None:
    """Crash tests: LLMOPS_FAULT_KILL=after:Dataset/x dies here as a SIGKILL would."""
    if os.environ.get("LLMOPS_FAULT_KILL") == point:
        os._exit(137)


def gate_name(gate: Any) -> str:
    """'task/metric rule', e.g. 'support-answers/rouge_l max_drop': unique within a suite."""
    return f"{gate.metric} {gate.rule}"


def verdicts(gates: Iterable[GateResult]) -> dict[str, GateVerdict]:
    """Judged gates as a lock entry records them: "task/metric rule" -> verdict."""
    return {gate_name(g): GateVerdict(passed=g.passed, detail=g.detail) for g in gates}
