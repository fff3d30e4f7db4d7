"""Apply, evaluation: a suite on a registered model, comparisons, gates and blessed baselines."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import TypeAdapter

from controller.api import split_ref
from controller.api.arena import DeploymentContestant, contestant_name
from controller.api.evalsuite import EvalSuiteSpec, SuiteEndpoint
from controller.apply import evaluate_job
from controller.apply.context import ApplyStep
from controller.apply.prepare import Preparer
from controller.apply.pull import ensure_model
from controller.apply.served import deployment_endpoint
from controller.report.terminal import gate_line
from controller.state.artifacts.tree import pull_folder, push_folder
from controller.state.registry.schema import VersionRow
from runners.evaluate.chat import ChatTarget
from runners.evaluate.compare import GateResult, MetricComparison, judge_gates, paired_bootstrap
from runners.evaluate.endpoint import Endpoint
from runners.evaluate.run import EvalError, EvalInputs, evaluate, load_samples
from runners.quantize.suite import default_gates, serving_gguf
from runners.weights import tokenizer_folder

BASELINES_DIR = Path("evals/baselines")
_SUITE_ENDPOINT: TypeAdapter[Any] = TypeAdapter(SuiteEndpoint)


@dataclass
class EvalOutcome:
    status: Literal["cached", "evaluated"]
    ref: str
    version: VersionRow
    folder: Path
    summary: dict[str, Any]


@dataclass
class Comparison:
    suite: str
    baseline: str
    candidate: str
    metrics: list[MetricComparison]
    gates: list[GateResult]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "passed": self.passed,
            "metrics": [m.as_dict() for m in self.metrics],
            "gates": [g.as_dict() for g in self.gates],
        }


@dataclass(frozen=True)
class EndpointSubject:
    """An OpenAI-compatible endpoint as one side of a comparison (`run_endpoint`'s inputs)."""

    base_url: str
    served_model: str
    tokenizer: str  # the registered model whose tokenizer the endpoint's model uses
    key_env: str | None = None
    concurrency: int = 8

    @property
    def label(self) -> str:
        return f"{self.served_model} at {self.base_url.rstrip('/')}"


class Evaluator(ApplyStep):
    """Runs suites of one loaded repository against registered models."""

    def suite(self, name: str) -> dict[str, Any]:
        resource = self.desired.resources.get(f"EvalSuite/{name}")
        if resource is None:
            raise EvalError(f"no EvalSuite spec named '{name}'")
        return dict(resource.fields)

    def digest(self, name: str) -> str:
        return self.desired.resources[f"EvalSuite/{name}"].digest

    def task_data(self, suite: dict[str, Any]) -> dict[str, Path]:
        out = {}
        for task in suite["tasks"]:
            data = task.get("data")
            if not data:
                continue
            if data["type"] == "file":
                out[task["name"]] = self.root / data["path"]
            else:
                prepared = Preparer(self.loaded, self.registry, self.console).prepare(
                    split_ref(data["dataset"])[0]
                )
                out[task["name"]] = prepared.folder / f"{data['split']}.jsonl"
        return out

    def results_dir(self, suite: str, version: VersionRow) -> Path:
        """Results by suite digest and the evaluate runner's code digest: results computed
        by other code, or by an untrusted ref, are never read back as these."""
        digest = self.digest(suite).removeprefix("sha256:")[:16]
        code = self.code_digest("evaluate").removeprefix("sha256:")[:8]
        folder = self.registry.paths.evaluations(suite)
        return (
            folder / f"{version.model.name}@{version.number}" / f"{digest}-{code}{self.namespace}"
        )

    def _judge_path(self, suite: dict[str, Any]) -> Path | None:
        """The suite's judge model, pulled if needed; None for a suite without a judge."""
        judge = suite.get("judge")
        if not judge:
            return None
        return ensure_model(
            judge["model"], dict(self.desired.resources), self.registry, self.root, self.console
        )[1]

    def run_served(self, suite_name: str, deployment: str, concurrency: int = 8) -> EvalOutcome:
        """The suite against what a deployment serves, over its OpenAI-compatible API (lm-eval's
        local-completions): the served version's tokenizer counts tokens, the endpoint does
        the rest. Never cached and never recorded as the version's metrics: it measures the
        deployment as it runs now, beside `run`, which measures the version in process."""
        self.suite(suite_name)  # an unknown suite is named before anything else
        served = deployment_endpoint(self.root, deployment)
        return self.run_endpoint(
            suite_name,
            served.base_url,
            deployment,
            served.version,
            served.key_env,
            concurrency,
            label=f"served-{deployment}",
        )

    def run_endpoint(
        self,
        suite_name: str,
        base_url: str,
        served_model: str,
        tokenizer_ref: str,
        key_env: str | None = None,
        concurrency: int = 8,
        label: str | None = None,
    ) -> EvalOutcome:
        """The suite against any OpenAI-compatible endpoint (`base_url` up to /v1) serving
        `served_model`, whose tokenizer is the registered `tokenizer_ref`'s; the key, if any,
        is read from the variable `key_env`."""
        self.suite(suite_name)
        version, path = ensure_model(
            tokenizer_ref, dict(self.desired.resources), self.registry, self.root, self.console
        )
        place = hashlib.sha256(f"{base_url} {served_model}".encode()).hexdigest()[:12]
        in_process = self.results_dir(suite_name, version)
        folder = in_process.with_name(f"{label or 'endpoint-' + place}-{in_process.name}")
        endpoint = Endpoint(
            base_url=base_url,
            model=served_model,
            tokenizer=path,
            api_key_env=key_env,
            concurrency=concurrency,
        )
        summary = self._evaluate(suite_name, path, folder, endpoint)
        return EvalOutcome(
            "evaluated", f"{version.model.name}@{version.number}", version, folder, summary
        )

    def run_suite_endpoint(
        self, suite_name: str, entry: dict[str, Any]
    ) -> tuple[Path, dict[str, Any]]:
        """The suite on an endpoint it names (an entry of its `endpoints`, as the
        Evaluation's spec carries it), over chat completions through the request cache: a
        rerun asks nothing. Results are kept by suite digest and the endpoint's identity and
        settings; nothing is recorded as a registry version's metrics."""
        suite = self.suite(suite_name)
        names = [contestant_name(e) for e in EvalSuiteSpec.model_validate(suite).endpoints]
        parsed = _SUITE_ENDPOINT.validate_python(entry)
        name = contestant_name(parsed)
        index = names.index(name) if name in names else 0
        if isinstance(parsed, DeploymentContestant):
            served = deployment_endpoint(self.root, parsed.deployment)
            target = ChatTarget(
                name,
                served.base_url.rstrip("/"),
                parsed.deployment,
                served.key_env,
                parsed.concurrency,
                parsed.retries,
                parsed.timeout_s,
                serves=served.version,
            )
            field = f"endpoints[{index}]"
        else:
            where = parsed.endpoint
            target = ChatTarget(
                name,
                where.base_url,
                where.model,
                where.api_key.env if where.api_key else None,
                where.concurrency,
                where.retries,
                where.timeout_s,
            )
            field = f"endpoints[{index}].endpoint"
        identity = json.dumps({**target.identity(), **target.settings()}, sort_keys=True)
        place = hashlib.sha256(identity.encode()).hexdigest()[:12]
        digest = self.digest(suite_name).removeprefix("sha256:")[:16]
        code = self.code_digest("evaluate").removeprefix("sha256:")[:8]
        folder = (
            self.registry.paths.evaluations(suite_name)
            / f"endpoint-{name}"
            / f"{digest}-{code}-{place}{self.namespace}"
        )
        summary = evaluate(
            EvalInputs(
                suite_name=suite_name,
                suite=suite,
                task_data=self.task_data(suite),
                model_path=Path(os.devnull),
                out=folder,
                judge_path=self._judge_path(suite),
                chat_target=target,
                chat_cache=self.registry.paths.endpoint_requests,
                chat_field=field,
                report=lambda text: self.console.print(f"  {text}"),
            )
        )
        return folder, summary

    def quantize_gate(
        self,
        suite_name: str,
        origin_ref: str,
        folder: Path,
        artifact: Path,
        served_name: str,
        label: str,
        max_perplexity_increase: float,
        margin: float,
        work: Path,
    ) -> tuple[Comparison, dict[str, Any]]:
        """A quantized artifact's suite gate (controller/apply/quantize.py): the suite on the
        source version `origin_ref` (in process, cached and recorded as any evaluation of it)
        and on the GGUF `artifact` served by the llama.cpp backend (its results in
        `work/suite`), compared sample by sample; the default gates (runners/quantize/suite.py)
        judged as an Evaluation's are. Returns the comparison and the artifact's summary."""
        base = self.run(suite_name, origin_ref)
        self.console.print(f"  gate: suite {suite_name} on {label}")
        with serving_gguf(artifact, served_name, work / "serve") as base_url:
            endpoint = Endpoint(
                base_url=base_url, model=served_name, tokenizer=tokenizer_folder(folder)
            )
            summary = self._evaluate(suite_name, folder, work / "suite", endpoint)
        comparisons = self.paired(
            suite_name, load_samples(base.folder), load_samples(work / "suite")
        )
        gates = judge_gates(
            default_gates(comparisons, max_perplexity_increase, margin),
            {c.metric: c for c in comparisons},
            summary["metrics"],
        )
        for verdict in gates:
            self.console.print(
                "  " + gate_line(f"{verdict.metric} {verdict.rule}", verdict.passed, verdict.detail)
            )
        return Comparison(suite_name, origin_ref, label, comparisons, gates), summary

    def _evaluate(
        self, suite_name: str, path: Path, folder: Path, endpoint: Endpoint | None = None
    ) -> dict[str, Any]:
        """The evaluate runner on the suite: in process on `path`, or against `endpoint`."""
        suite = self.suite(suite_name)
        return evaluate(
            EvalInputs(
                suite_name=suite_name,
                suite=suite,
                task_data=self.task_data(suite),
                model_path=path,
                out=folder,
                judge_path=self._judge_path(suite),
                endpoint=endpoint,
                report=lambda text: self.console.print(f"  {text}"),
            )
        )

    def _evaluate_in_job(
        self, suite_name: str, ref: str, path: Path, folder: Path, executor: dict[str, Any]
    ) -> dict[str, Any]:
        """The evaluate runner on the suite in a Kubernetes Job (apply/evaluate_job.py)."""
        suite = self.suite(suite_name)
        job = evaluate_job.write_job(
            suite_name,
            suite,
            self.task_data(suite),
            path,
            folder,
            self._judge_path(suite),
            {"model": ref, "suite_digest": self.digest(suite_name)},
        )
        return evaluate_job.run_job(
            job,
            ref,
            executor,
            self.registry.paths.root,
            self.registry.blobs.store,
            say=lambda text: self.console.print(f"  {text}"),
        )

    def run(
        self,
        suite_name: str,
        model_ref: str,
        force: bool = False,
        executor: dict[str, Any] | None = None,
    ) -> EvalOutcome:
        """The suite on a registered model, in process, or as a Kubernetes Job when
        `executor` (an Experiment's training.executor) has type kubernetes; cached by results
        folder either way, and recorded alike."""
        version, path = ensure_model(
            model_ref, dict(self.desired.resources), self.registry, self.root, self.console
        )
        ref = f"{version.model.name}@{version.number}"
        folder = self.results_dir(suite_name, version)
        store, state_root = self.registry.blobs.store, self.registry.paths.root
        if not (folder / "results.json").is_file() and not force:
            pull_folder(store, state_root, folder)  # measured by another runner
        if (folder / "results.json").is_file() and not force:
            return EvalOutcome(
                "cached", ref, version, folder, json.loads((folder / "results.json").read_text())
            )
        if executor and executor.get("type") == "kubernetes":
            summary = self._evaluate_in_job(suite_name, ref, path, folder, executor)
        else:
            summary = self._evaluate(suite_name, path, folder)
        push_folder(store, state_root, folder)
        # The row says who measured it, so main never counts a branch's numbers as its own.
        self.registry.add_metrics(
            version.id,
            suite_name,
            self.digest(suite_name),
            summary["metrics"],
            self.provenance(self.code_digest("evaluate")).get("provenance"),
        )
        return EvalOutcome("evaluated", ref, version, folder, summary)

    def compare(
        self,
        suite_name: str,
        baseline_ref: str | None,
        candidate_ref: str | None,
        endpoint: EndpointSubject | None = None,
        executor: dict[str, Any] | None = None,
    ) -> Comparison:
        """Candidate against a model (evaluated as needed) or the suite's blessed baseline.
        With `endpoint`, the endpoint is the candidate when `candidate_ref` is None (against
        `baseline_ref` or the blessed baseline), else the baseline; evaluated over its API
        (`run_endpoint`) and compared sample by sample like a registered version. `executor`:
        as `run`'s, for the registered models evaluated here."""
        suite = self.suite(suite_name)
        if endpoint is not None and candidate_ref is not None and baseline_ref is not None:
            raise EvalError(
                "an endpoint takes the place of the candidate or of the baseline: name the "
                "other side only (--candidate or --baseline)"
            )
        if candidate_ref is None and endpoint is None:
            raise EvalError("compare needs a candidate: a model reference or an endpoint")
        ep_outcome = (
            self.run_endpoint(
                suite_name,
                endpoint.base_url,
                endpoint.served_model,
                endpoint.tokenizer,
                endpoint.key_env,
                endpoint.concurrency,
            )
            if endpoint is not None
            else None
        )
        if candidate_ref is not None:
            candidate = self.run(suite_name, candidate_ref, executor=executor)
            candidate_label = candidate.ref
        else:
            assert endpoint is not None and ep_outcome is not None
            candidate, candidate_label = ep_outcome, endpoint.label
        if endpoint is not None and ep_outcome is not None and candidate_ref is not None:
            base_label = endpoint.label
            base_samples = load_samples(ep_outcome.folder)
        elif baseline_ref is None:
            blessed = self.blessed(suite_name)
            if blessed is None:
                raise EvalError(
                    f"suite '{suite_name}' has no blessed baseline; pass --baseline "
                    f"or run 'llmops bless {suite_name} <model>'"
                )
            base_label = f"{blessed['model']} (blessed)"
            base_samples = {
                k: {i: tuple(v) for i, v in rows.items()} for k, rows in blessed["samples"].items()
            }
        else:
            base = self.run(suite_name, baseline_ref, executor=executor)
            base_label = base.ref
            base_samples = load_samples(base.folder)
        cand_samples = load_samples(candidate.folder)
        comparisons = self.paired(suite_name, base_samples, cand_samples)
        by_name = {c.metric: c for c in comparisons}
        gates = judge_gates(suite.get("gates") or [], by_name, candidate.summary["metrics"])
        return Comparison(suite_name, base_label, candidate_label, comparisons, gates)

    def paired(
        self,
        suite_name: str,
        base_samples: dict[str, dict[str, tuple[float, float]]],
        cand_samples: dict[str, dict[str, tuple[float, float]]],
    ) -> list[MetricComparison]:
        """Each per-sample metric both sides have, compared by the suite's paired bootstrap."""
        bootstrap = self.suite(suite_name).get("bootstrap") or {}
        comparisons = []
        for metric in sorted(set(base_samples) & set(cand_samples)):
            if metric.endswith(("/throughput", "/latency")):
                continue  # measured per task, not per sample: no paired interval
            comparisons.append(
                paired_bootstrap(
                    metric,
                    base_samples[metric],
                    cand_samples[metric],
                    samples=int(bootstrap.get("samples", 1000)),
                    confidence=float(bootstrap.get("confidence", 0.95)),
                    seed=int(bootstrap.get("seed", 0)),
                )
            )
        return comparisons

    def baseline_path(self, suite_name: str) -> Path:
        configured = self.suite(suite_name).get("baseline")
        return self.root / (configured or BASELINES_DIR / f"{suite_name}.json")

    def blessed(self, suite_name: str) -> dict[str, Any] | None:
        path = self.baseline_path(suite_name)
        return json.loads(path.read_text()) if path.is_file() else None

    def bless(self, suite_name: str, model_ref: str) -> Path:
        """Write the accepted per-sample results and tolerances: a file to review and commit."""
        outcome = self.run(suite_name, model_ref)
        path = self.baseline_path(suite_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = load_samples(outcome.folder)
        document = {
            "suite": suite_name,
            "suite_digest": self.digest(suite_name),
            "model": outcome.ref,
            "model_spec_digest": outcome.version.spec_digest,
            "metrics": outcome.summary["metrics"],
            "tolerances": self.suite(suite_name).get("gates") or [],
            "samples": {
                k: {i: list(v) for i, v in sorted(rows.items())}
                for k, rows in sorted(samples.items())
            },
        }
        path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        return path
