"""Apply, engine: carry out a plan in dependency order, recording each result in llmops.lock.

Every step is idempotent by digest (a pulled model, a prepared dataset version, a trained
run, stored evaluation results), and the lock file is rewritten after each action, so an
apply killed at any point converges when run again: finished work is found and reused,
unfinished work is redone (training resumes from its last checkpoint).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from controller.apply.context import ApplyStep
from controller.apply.evaluate import Evaluator
from controller.apply.prepare import Preparer
from controller.apply.pull import pull_model
from controller.apply.train import Trainer
from controller.plan.types import Action, ActionKind, Plan
from controller.state.lockfile import LOCK_VERSION, lock_entry, read_lock, write_lock
from controller.state.registry.store import Registry
from controller.workspace import Loaded

Status = Literal["applied", "recorded", "skipped", "failed"]


class GateFailed(Exception):
    """An evaluation's gates failed, so what depends on it (a promotion) is not applied."""


@dataclass
class ActionResult:
    address: str
    action: str
    status: Status
    seconds: float = 0.0
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
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


class Applier(ApplyStep):
    """Runs the actions of one plan against one repository's state."""

    def __init__(
        self,
        loaded: Loaded,
        registry: Registry,
        console: Console,
        lock_path: Path,
        skip_deploy: bool = False,
        on_result: Callable[[ActionResult], None] | None = None,
    ) -> None:
        super().__init__(loaded, registry, console)
        self.lock_path = lock_path
        self.skip_deploy = skip_deploy
        self.on_result = on_result or (lambda result: None)
        self.lock = read_lock(lock_path)
        self.evaluator = Evaluator(loaded, registry, console)
        self.trainer = Trainer(loaded, registry, console)
        self.preparer = Preparer(loaded, registry, console)
        self._deployer: Any = None
        self._outputs: dict[str, dict[str, Any]] = {}

    # -- the loop ----------------------------------------------------------------------

    def apply(self, the_plan: Plan) -> ApplyReport:
        report = ApplyReport()
        blocked: set[str] = set()
        changed: set[str] = set()
        for action in the_plan.actions:
            # A deployment naming `model@alias` has no digest input for the alias: when this
            # apply moved what it depends on, it is rolled out again (a no-op if unchanged).
            moved = action.address.startswith("Deployment/") and bool(
                changed & set(self._dependencies(action.address))
            )
            if action.kind == ActionKind.DELETE:
                result = self._delete(action)
            elif action.kind == ActionKind.NOOP and self._recorded(action) and not moved:
                continue
            elif self.skip_deploy and action.address.startswith("Deployment/"):
                result = ActionResult(
                    action.address, str(action.kind), "skipped", message="--skip-deploy"
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
                result = self._run(action)
            if result.status in ("failed", "skipped"):
                blocked.add(action.address)
            elif result.status == "applied":
                changed.add(action.address)
            report.results.append(result)
            self.on_result(result)
        return report

    def _dependencies(self, address: str) -> tuple[str, ...]:
        resource = self.desired.resources.get(address)
        return resource.depends_on if resource else ()

    def _recorded(self, action: Action) -> bool:
        """A noop whose lock entry is current needs nothing; otherwise its outputs are recorded."""
        entry = self.lock["resources"].get(action.address)
        return entry is not None and entry.get("digest") == action.after

    def _run(self, action: Action) -> ActionResult:
        from controller.apply.errors import permanent_errors

        kind = action.address.split("/", 1)[0]
        handler = getattr(self, f"_apply_{kind.lower()}")
        started = time.monotonic()
        verb = "recording" if action.kind == ActionKind.NOOP else str(action.kind)
        self.console.print(f"[bold]{verb}[/bold] {action.address}")
        fault_point(f"before:{action.address}")
        try:
            outputs = handler(action.address)
        except (*permanent_errors(), GateFailed) as err:
            self.console.print(f"  [red]failed[/red]: {err}")
            return ActionResult(
                action.address,
                str(action.kind),
                "failed",
                time.monotonic() - started,
                message=str(err),
            )
        self._outputs[action.address] = outputs
        fault_point(f"after:{action.address}")
        self._record(action.address, outputs)
        status: Status = "recorded" if action.kind == ActionKind.NOOP else "applied"
        seconds = time.monotonic() - started
        self.console.print(f"  [green]{status}[/green] {action.address} in {seconds:.1f} s")
        return ActionResult(action.address, str(action.kind), status, seconds, outputs)

    def _record(self, address: str, outputs: dict[str, Any]) -> None:
        """Persist after every action: this is what makes apply restartable."""
        self.lock.setdefault("resources", {})[address] = lock_entry(self.desired, address, outputs)
        self.lock["lockVersion"] = LOCK_VERSION
        write_lock(self.lock_path, self.lock)

    def _delete(self, action: Action) -> ActionResult:
        started = time.monotonic()
        self.console.print(f"[bold]delete[/bold] {action.address}")
        entry = self.lock["resources"].get(action.address) or {}
        if action.address.startswith("Deployment/"):
            self.deployer.stop(action.address.split("/", 1)[1], entry.get("outputs") or {})
        self.lock["resources"].pop(action.address, None)
        write_lock(self.lock_path, self.lock)
        return ActionResult(action.address, "delete", "applied", time.monotonic() - started)

    # -- one handler per kind ------------------------------------------------------------

    def _apply_model(self, address: str) -> dict[str, Any]:
        resource = self.desired.resources[address]
        source = resource.spec["source"]
        if source["type"] != "experiment":
            outcome = pull_model(resource, self.registry, self.root, self.console)
            return {"version": outcome.ref}
        # A model an experiment produces: promote the run's version once its gates pass.
        run_address = f"Experiment/{source['experiment']}/{source['run']}"
        trained = self.trainer.train(source["experiment"], source["run"])
        evaluation = f"Evaluation/{source['experiment']}/{source['run']}"
        if evaluation in self.desired.resources:
            outputs = self._apply_evaluation(evaluation)
            failed = sorted(k for k, v in (outputs.get("gates") or {}).items() if v != "pass")
            if failed:
                raise GateFailed(
                    f"{trained.ref} ({run_address}) failed gate(s) {', '.join(failed)}; "
                    f"aliases {resource.spec.get('aliases') or []} stay where they are"
                )
        for alias in resource.spec.get("aliases") or []:
            self.registry.set_alias(trained.version.model.name, alias, trained.version.number)
            self.console.print(f"  {trained.version.model.name}@{alias} -> {trained.ref}")
        return {"version": trained.ref, "aliases": list(resource.spec.get("aliases") or [])}

    def _apply_dataset(self, address: str) -> dict[str, Any]:
        outcome = self.preparer.prepare(address.split("/", 1)[1])
        stats = outcome.stats or {}
        return {
            "version": outcome.version.version,
            "rows": dict(stats.get("rows") or {}),
            "removed": {
                step["step"]: step["removed"]
                for step in stats.get("steps") or []
                if step["removed"]
            },
        }

    def _apply_evalsuite(self, address: str) -> dict[str, Any]:
        """A suite runs nothing by itself: applying it checks its task data is there."""
        from runners.evaluate.run import EvalError

        name = address.split("/", 1)[1]
        suite = self.evaluator.suite(name)
        missing = [str(p) for p in self.evaluator.task_data(suite).values() if not p.exists()]
        if missing:
            raise EvalError(f"suite '{name}' task data missing: {', '.join(missing)}")
        return {"tasks": len(suite.get("tasks") or [])}

    def _apply_experiment(self, address: str) -> dict[str, Any]:
        _, experiment, run = address.split("/", 2)
        outcome = self.trainer.train(experiment, run)
        result = outcome.result or {}
        metrics = {
            k: result[k]
            for k in ("final_loss", "final_eval_loss", "steps", "tokens_per_s")
            if isinstance(result.get(k), int | float)
        }
        return {"version": outcome.ref, "metrics": round_metrics(metrics)}

    def _subject_ref(self, subject: str) -> str:
        if subject.startswith("model:"):
            return subject.removeprefix("model:")
        _, experiment, run = subject.split("/", 2)
        return self.trainer.train(experiment, run).ref

    def _control_ref(self, experiment: str) -> str | None:
        runs = [a for a in self.desired.resources if a.startswith(f"Experiment/{experiment}/")]
        if not runs:
            return None
        spec = self.desired.resources[sorted(runs)[0]].spec
        control = spec.get("control") or {}
        if control.get("run"):
            return self.trainer.train(experiment, control["run"]).ref
        return control.get("model") or spec.get("base_model")

    def _apply_evaluation(self, address: str) -> dict[str, Any]:
        if address in self._outputs:  # already evaluated for a promotion in this apply
            return self._outputs[address]
        _, experiment, run = address.split("/", 2)
        spec = self.desired.resources[address].spec
        suite = spec["suite"]
        subject = self._subject_ref(spec["subject"])
        control = None if run == "control" else self._control_ref(experiment)
        if control is None or control == subject:
            outcome = self.evaluator.run(suite, subject)
            return {
                "subject": outcome.ref,
                "suite": suite,
                "metrics": round_metrics(outcome.summary["metrics"]),
            }
        comparison = self.evaluator.compare(suite, control, subject)
        candidate = self.evaluator.run(suite, subject)
        outputs = {
            "subject": comparison.candidate,
            "suite": suite,
            "baseline": comparison.baseline,
            "metrics": round_metrics(candidate.summary["metrics"]),
            "comparison": [
                {
                    k: (float(f"{v:.6g}") if isinstance(v, float) else v)
                    for k, v in c.as_dict().items()
                    if k != "flipped"
                }
                for c in comparison.metrics
            ],
            "gates": {gate_name(g): "pass" if g.passed else "fail" for g in comparison.gates},
            "gate_details": {gate_name(g): g.detail for g in comparison.gates},
        }
        for gate in comparison.gates:
            mark = "[green]pass[/green]" if gate.passed else "[red]FAIL[/red]"
            self.console.print(f"  gate {gate_name(gate)}: {mark} ({gate.detail})")
        self._outputs[address] = outputs
        return outputs

    @property
    def deployer(self) -> Any:
        if self._deployer is None:
            from controller.apply.deploy import Deployer

            self._deployer = Deployer(self.loaded, self.registry, self.console)
        return self._deployer

    def _apply_deployment(self, address: str) -> dict[str, Any]:
        name = address.split("/", 1)[1]
        previous = (self.lock["resources"].get(address) or {}).get("outputs") or {}
        return self.deployer.deploy(name, previous)

    def _apply_pipeline(self, address: str) -> dict[str, Any]:
        spec = self.desired.resources[address].spec
        return {"steps": [s["step"] for s in spec.get("steps") or []]}


def fault_point(point: str) -> None:
    """Crash tests: LLMOPS_FAULT_KILL=after:Dataset/x dies here as a SIGKILL would."""
    if os.environ.get("LLMOPS_FAULT_KILL") == point:
        os._exit(137)


def gate_name(gate: Any) -> str:
    """'task/metric rule', e.g. 'support-answers/rouge_l max_drop': unique within a suite."""
    return f"{gate.metric} {gate.rule}"
