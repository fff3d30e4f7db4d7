"""Loading, resolution: references across specs, paths, cycles, and the desired state."""

from __future__ import annotations

import graphlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from controller.api import split_ref
from controller.api.arena import DeploymentContestant, FilePrompts, contestant_name
from controller.api.dataset import (
    ArenaSource,
    DatasetSource,
    DatasetSpec,
    FileSource,
    Source,
    Step,
)
from controller.api.evalsuite import DatasetData, FileData, SuiteEndpoint
from controller.api.evaluation import EvaluationSpec
from controller.api.experiment import DEFAULT_RUN, ExperimentSpec
from controller.api.model import (
    ExperimentSource,
    GgufFileSource,
    LocalDirSource,
    QuantizedSource,
)
from controller.api.pipeline import PipelineStep
from controller.load.code import CodeTable, code_identities
from controller.load.compose import Override, Run, compose_experiment
from controller.load.diagnostics import Diagnostic, did_you_mean
from controller.load.files import FileDigests, FileInfo, path_escape
from controller.load.loader import LoadedSpec
from controller.load.validate import format_loc
from controller.plan.address import Address
from controller.plan.digest import resource_digest
from controller.plan.kinds import EXPERIMENT, KINDS, MODEL
from controller.plan.types import DesiredResource, DesiredState, Estimate

# Digests the rows a Dataset's `arena` or `collected` source gives now (the Dataset's format,
# the source) -> "sha256:..."; given by the layer above state (controller/observe/sources.py)
# so the plan sees new votes and newly collected rows. Without one, those sources add no input.
SourceObserver = Callable[[str, Any], "str | None"]

Loc = tuple[str | int, ...]


# Reference throughput on the 2-core reference machine (see docs/architecture.md); full
# fine-tuning measured on SmolLM2-135M at about 210 tokens/s (README, Performance).
TRAIN_TOKENS_PER_S = {"lora": 300.0, "qlora": 300.0, "full": 210.0}
GENERATE_TOKENS_PER_S = 30.0
PREPARE_ROWS_PER_S = 500.0
BYTES_PER_TOKEN = 4.0


# Settings that change what apply reports about a result, never the result: asking for a
# brain scan of a run scans its trained version; it must not retrain it. How many processes
# train a run is how it runs, not what it trains (batch_size is the global batch, the losses
# agree within float reduction order), so a run resumes its checkpoint at another world size.
NOT_DIGESTED: dict[str, tuple[str, ...]] = {"Experiment": ("inspect", "training.distributed")}


def digested(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved spec its digest covers (a dotted key leaves out a nested one)."""
    skip = NOT_DIGESTED.get(kind, ())
    return _without(spec, [key.split(".") for key in skip]) if skip else spec


def _without(value: dict[str, Any], keys: list[list[str]]) -> dict[str, Any]:
    out = {k: v for k, v in value.items() if [k] not in keys}
    for key in keys:
        if len(key) > 1 and isinstance(out.get(key[0]), dict):
            out[key[0]] = _without(out[key[0]], [key[1:]])
    return out


@dataclass
class Edge:
    """`source` needs `target`; `digest_input` when target's digest is part of source's."""

    source: str
    target: str
    digest_input: bool
    spec: LoadedSpec
    loc: Loc


@dataclass(frozen=True)
class _Node:
    """A resource in the graph: its typed spec, that spec's JSON form and the file it came from."""

    kind: str
    name: str
    model: BaseModel
    data: dict[str, Any]
    source: LoadedSpec


@dataclass
class Resolution:
    desired: DesiredState | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    runs: dict[str, list[Run]] = field(default_factory=dict)


class _Resolver:
    def __init__(
        self,
        specs: list[LoadedSpec],
        root: Path,
        overrides: list[Override],
        files: FileDigests,
        code: CodeTable,
        observe_source: SourceObserver | None = None,
    ) -> None:
        self.root = root
        self.code = code
        self.observe_source = observe_source
        self.files = files
        self.overrides = overrides
        self.diagnostics: list[Diagnostic] = []
        self.by_kind: dict[str, dict[str, LoadedSpec]] = {}
        self.edges: list[Edge] = []
        self.file_inputs: dict[str, dict[str, str]] = {}
        self.file_infos: dict[str, FileInfo] = {}
        self.row_files: dict[str, list[str]] = {}  # a dataset's own source files
        self.runs: dict[str, list[Run]] = {}
        self.nodes: dict[str, _Node] = {}
        # Gathered for the checks (see CHECKS): set by check() before any runs, or by an
        # earlier kind's check for a later one.
        self.models: dict[str, Address] = {}  # registered_names()
        self.collect_stores: dict[str, LoadedSpec] = {}  # collect.into -> its Deployment
        self.suite_files: dict[str, dict[str, str]] = {}  # EvalSuite -> its data files
        self._index(specs)

    # ----- indexing -----------------------------------------------------------------------
    def _index(self, specs: list[LoadedSpec]) -> None:
        for spec in specs:
            names = self.by_kind.setdefault(spec.kind, {})
            first = names.get(spec.name)
            if first is not None:
                self._diag(
                    spec,
                    ("metadata", "name"),
                    f"duplicate {spec.kind} name '{spec.name}'",
                    f"first defined at {first.doc.file}:{first.doc.line}; "
                    "names are unique per kind",
                )
                continue
            names[spec.name] = spec

    def _diag(self, spec: LoadedSpec, loc: Loc, message: str, hint: str = "") -> None:
        line, col = spec.position(loc)
        self.diagnostics.append(
            Diagnostic(spec.doc.file, line, col, format_loc(loc), message, hint)
        )

    def specs(self, kind: str) -> list[LoadedSpec]:
        return [self.by_kind.get(kind, {})[n] for n in sorted(self.by_kind.get(kind, {}))]

    # ----- experiments --------------------------------------------------------------------
    def compose(self) -> None:
        for spec in self.specs("Experiment"):
            runs, problems = compose_experiment(spec, self.root, self.overrides)
            self.diagnostics.extend(problems)
            if runs:
                self.runs[spec.name] = runs

    def registered_names(self) -> dict[str, Address]:
        """Model names a reference may use -> Model/x or Experiment/x (register_as)."""
        names = {name: Address(MODEL, name) for name in self.by_kind.get("Model", {})}
        for spec in self.specs("Experiment"):
            register_as = spec.resource.spec.register_as
            if not register_as:
                continue
            model_spec = self.by_kind.get("Model", {}).get(register_as)
            if model_spec is not None:
                source = model_spec.resource.spec.source
                if not (isinstance(source, ExperimentSource) and source.experiment == spec.name):
                    self._diag(
                        spec,
                        ("spec", "register_as"),
                        f"register_as '{register_as}' is already a Model spec with its own source",
                        "pick another name, or give that Model 'source: {type: experiment, "
                        f"experiment: {spec.name}}}'",
                    )
                continue
            names.setdefault(register_as, Address(EXPERIMENT, spec.name))
        return names

    # ----- references ---------------------------------------------------------------------
    def _model_ref(
        self, spec: LoadedSpec, loc: Loc, ref: str, source: str, digest_input: bool = True
    ) -> None:
        name, selector = split_ref(ref)
        target = self.models.get(name)
        if target is None:
            self._diag(
                spec,
                loc,
                f"unknown model '{name}'",
                did_you_mean(name, self.models)
                or "declare it in specs/models/ or as an Experiment's register_as",
            )
            return
        if target.kind == MODEL:
            edge = Edge(source, str(target), digest_input and selector is None, spec, loc)
            self.edges.append(edge)
            return
        runs = self.runs.get(target.experiment, [])
        if selector is None:
            # The latest desired output of the experiment is its default run.
            run_address = Address(EXPERIMENT, target.name, DEFAULT_RUN)
            self.edges.append(Edge(source, str(run_address), digest_input, spec, loc))
        else:
            for run in runs:
                run_address = Address(EXPERIMENT, target.name, run.name)
                self.edges.append(Edge(source, str(run_address), False, spec, loc))

    def _known(self, spec: LoadedSpec, loc: Loc, ref: str, kind: str) -> str | None:
        """The spec name `ref` names among `kind`'s specs; None, and a diagnostic, if none."""
        name, _selector = split_ref(ref)
        known = self.by_kind.get(kind, {})
        if name not in known:
            folder = {
                "Dataset": "datasets",
                "EvalSuite": "evals",
                "Deployment": "deployments",
                "Experiment": "experiments",
                "Arena": "arenas",
            }.get(kind, "")
            self._diag(
                spec,
                loc,
                f"unknown {kind} '{name}'",
                did_you_mean(name, known) or f"declare it in specs/{folder}/",
            )
            return None
        return name

    def _named_ref(
        self, spec: LoadedSpec, loc: Loc, ref: str, kind: str, source: str, digest_input: bool
    ) -> bool:
        """Check a reference to a spec and make `source` wait for it (each run of an Experiment)."""
        name = self._known(spec, loc, ref, kind)
        if name is None:
            return False
        if kind == EXPERIMENT:
            for run in self.runs.get(name, []):
                self.edges.append(
                    Edge(source, f"Experiment/{name}/{run.name}", digest_input, spec, loc)
                )
        else:
            self.edges.append(Edge(source, f"{kind}/{name}", digest_input, spec, loc))
        return True

    def _node(
        self,
        spec: LoadedSpec,
        address: str | None = None,
        kind: str | None = None,
        model: BaseModel | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Add a resource to the graph (by default the spec itself); `data` is its JSON form."""
        model = model if model is not None else spec.resource.spec
        data = data if data is not None else model.model_dump(mode="json")
        self.nodes[address or spec.address] = _Node(kind or spec.kind, spec.name, model, data, spec)
        return address or spec.address

    def _escapes(self, spec: LoadedSpec, loc: Loc, relative: str, folder_only: bool) -> bool:
        """Report a path that leaves the repository (or its folder) through a symlink."""
        problem = path_escape(self.root, relative, folder_only=folder_only)
        if problem:
            self._diag(
                spec,
                loc,
                problem,
                "keep data and models inside the repository, e.g. under data/, as files or "
                "symlinks that point inside it",
            )
        return problem is not None

    def _path(
        self,
        spec: LoadedSpec,
        loc: Loc,
        relative: str,
        owner: str,
        required: bool = True,
        folder_only: bool = False,
    ) -> None:
        if self._escapes(spec, loc, relative, folder_only):
            return
        info = self.files.info(relative)
        if info is None:
            if required:
                self._diag(
                    spec,
                    loc,
                    f"'{relative}' does not exist",
                    "check the path; it is relative to the repository root",
                )
            return
        self.file_inputs.setdefault(owner, {})[f"file:{Path(relative).as_posix()}"] = info.digest
        self.file_infos[Path(relative).as_posix()] = info

    def check(self) -> None:
        """Check every spec and add its resources and edges, kind by kind in CHECKS' order."""
        self.models = self.registered_names()
        self.collect_stores = {
            s.resource.spec.collect.into: s
            for s in self.specs("Deployment")
            if s.resource.spec.collect.into
        }
        for kind, check_spec in CHECKS.items():
            for spec in self.specs(kind):
                check_spec(self, spec)
            if kind in CHECKS_AFTER:
                CHECKS_AFTER[kind](self)

    def _check_local_ports(self) -> None:
        """Two local Deployments on one port would share it (SO_REUSEPORT) or fail to start."""
        first_on: dict[int, LoadedSpec] = {}
        in_order = sorted(self.specs("Deployment"), key=lambda s: (s.doc.file, s.doc.line))
        for spec in in_order:
            dep = spec.resource.spec
            if dep.target != "local":
                continue  # docker and KServe do not listen on this host when applied
            first = first_on.setdefault(dep.port, spec)
            if first is spec:
                continue
            written = "port" in (first.doc.data.get("spec") or {})  # else the default
            line, _ = first.position(("spec", "port") if written else ("spec",), key=True)
            self._diag(
                spec,
                ("spec", "port"),
                f"port {dep.port} is already the port of Deployment '{first.name}' "
                f"({first.doc.file}:{line}); local deployments both listen on 127.0.0.1:{dep.port}",
                "give each local Deployment its own port",
            )

    # ----- graph and digests --------------------------------------------------------------
    def graph(self) -> dict[str, int] | None:
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for node in self.nodes:
            sorter.add(node)
        for edge in self.edges:
            if edge.target in self.nodes:
                sorter.add(edge.source, edge.target)
        try:
            sorter.prepare()
        except graphlib.CycleError as err:
            cycle: list[str] = list(err.args[1])
            first = next(
                (e for e in self.edges if e.source == cycle[1] and e.target == cycle[0]),
                None,
            ) or next(e for e in self.edges if e.source in cycle)
            self._diag(
                first.spec,
                first.loc,
                "dependency cycle: " + " -> ".join(reversed(cycle)),
                "break the cycle: a resource cannot depend on its own output",
            )
            return None
        waves: dict[str, int] = {}
        deps: dict[str, set[str]] = {}
        for edge in self.edges:
            deps.setdefault(edge.source, set()).add(edge.target)
        while sorter.is_active():
            ready = sorter.get_ready()
            for node in ready:
                waves[node] = 1 + max(
                    (waves[d] for d in deps.get(node, ()) if d in waves), default=-1
                )
            sorter.done(*ready)
        return waves

    def build(self, waves: dict[str, int]) -> DesiredState:
        resources: dict[str, DesiredResource] = {}
        deps: dict[str, set[str]] = {}
        digest_deps: dict[str, set[str]] = {}
        for edge in self.edges:
            if edge.target not in self.nodes:
                continue
            deps.setdefault(edge.source, set()).add(edge.target)
            if edge.digest_input:
                digest_deps.setdefault(edge.source, set()).add(edge.target)
        for address in sorted(self.nodes, key=lambda a: (waves[a], a)):
            node = self.nodes[address]
            kind, spec_data = node.kind, node.data
            inputs = {d: resources[d].digest for d in sorted(digest_deps.get(address, ()))}
            inputs.update(self.file_inputs.get(address, {}))
            code = self.code[KINDS[kind].runner]
            resources[address] = DesiredResource(
                address=address,
                kind=kind,
                name=node.name,
                spec=node.model,
                fields=spec_data,
                inputs=dict(sorted(inputs.items())),
                depends_on=tuple(sorted(deps.get(address, ()))),
                digest=resource_digest(kind, digested(kind, spec_data), inputs, code.digest),
                runner=KINDS[kind].runner,
                code_version=code.digest,
                file=node.source.doc.file,
                line=node.source.doc.line,
                estimate=self.estimate(node.model, address),
                code_files=code.files,
            )
        return DesiredState(resources=resources, waves=waves)

    # ----- estimates ----------------------------------------------------------------------
    def _rows_and_bytes(self, address: str) -> tuple[int, int]:
        rows = size = 0
        for key in self.row_files.get(address, []):
            info = self.file_infos.get(key)
            if info:
                rows += info.rows or 0
                size += info.size
        return rows, size

    def estimate(self, spec: BaseModel, address: str) -> Estimate | None:
        if isinstance(spec, DatasetSpec):
            rows, _ = self._rows_and_bytes(address)
            return Estimate("rows", rows, rows / PREPARE_ROWS_PER_S) if rows else None
        if isinstance(spec, ExperimentSpec):
            cfg = spec
            rows, size = self._rows_and_bytes(f"Dataset/{split_ref(cfg.dataset)[0]}")
            if not rows:
                return None
            t = cfg.training
            per_row = min(size / BYTES_PER_TOKEN / rows, t.max_seq_len)
            if t.max_steps:
                tokens = t.max_steps * t.batch_size * t.gradient_accumulation * per_row
            else:
                tokens = rows * per_row * (t.epochs or 1.0)
            return Estimate("tokens", int(tokens), tokens / TRAIN_TOKENS_PER_S[t.method])
        if isinstance(spec, EvaluationSpec):
            suite = self.by_kind.get("EvalSuite", {}).get(spec.suite)
            if suite is None:
                return None
            samples = 0
            seconds = 0.0
            for task in suite.resource.spec.tasks:
                n = 0
                if isinstance(task.data, FileData):
                    info = self.file_infos.get(Path(task.data.path).as_posix())
                    n = (info.rows or 0) if info else 0
                if task.limit:
                    n = min(n, task.limit)
                samples += n
                if task.type == "generate_until":
                    seconds += n * task.generation.max_new_tokens / GENERATE_TOKENS_PER_S
                else:
                    seconds += n * 0.2
            return Estimate("samples", samples, seconds) if samples else None
        return None


# ----- checks, one per kind ---------------------------------------------------------------
# Each checks one spec: it adds the spec's resources (`_node`), the edges of its references
# and its file inputs, and reports what is wrong as diagnostics.


def _check_model(r: _Resolver, spec: LoadedSpec) -> None:
    """A Model: its local folder or file, or the experiment run that trains it."""
    address = r._node(spec)
    source = spec.resource.spec.source
    if isinstance(source, LocalDirSource | GgufFileSource):
        # A model folder's symlinks stay in it: the pull copies what they point at.
        r._path(spec, ("spec", "source", "path"), source.path, address, folder_only=True)
    if isinstance(source, ExperimentSource):
        _model_from_run(r, spec, source, address)
    if isinstance(source, QuantizedSource):
        # The artifact is derived from that version: it waits for it, and a gate file is input.
        r._model_ref(spec, ("spec", "source", "from"), source.from_, address)
        if source.gate.texts:
            r._path(spec, ("spec", "source", "gate", "texts"), source.gate.texts, address)
        if source.gate.suite:
            # The gate runs that suite: it waits for it, and the suite's digest is an input.
            loc: Loc = ("spec", "source", "gate", "suite")
            r._named_ref(spec, loc, source.gate.suite, "EvalSuite", address, True)


def _model_from_run(r: _Resolver, spec: LoadedSpec, source: ExperimentSource, address: str) -> None:
    """A Model an experiment trains waits for its one run, not for the experiment's others."""
    loc: Loc = ("spec", "source", "experiment")
    name = r._known(spec, loc, source.experiment, "Experiment")
    if name is None:
        return
    runs = {run.name for run in r.runs.get(source.experiment, [])}
    if runs and source.run not in runs:
        r._diag(
            spec,
            ("spec", "source", "run"),
            f"experiment '{source.experiment}' has no run '{source.run}'",
            did_you_mean(source.run, runs) or f"runs: {', '.join(sorted(runs))}",
        )
    if source.run in {run.name for run in r.runs.get(name, [])}:
        r.edges.append(Edge(address, f"Experiment/{name}/{source.run}", True, spec, loc))


def _check_eval_suite(r: _Resolver, spec: LoadedSpec) -> None:
    """An EvalSuite: its tasks' data (files or Datasets), its judge and its baseline."""
    address = r._node(spec)
    suite = spec.resource.spec
    for i, task in enumerate(suite.tasks):
        loc: Loc = ("spec", "tasks", i, "data")
        if isinstance(task.data, FileData):
            r._path(spec, (*loc, "path"), task.data.path, address)
        elif isinstance(task.data, DatasetData):
            r._named_ref(spec, (*loc, "dataset"), task.data.dataset, "Dataset", address, True)
    if suite.judge:
        r._model_ref(spec, ("spec", "judge", "model"), suite.judge.model, address)
    if suite.baseline:
        r._path(spec, ("spec", "baseline"), suite.baseline, address, required=False)
    for i, entry in enumerate(suite.endpoints):
        _suite_endpoint(r, spec, i, entry)
    # For a Dataset's decontaminate step (checked later): the suite's data, not its baseline.
    r.suite_files[spec.name] = {
        k: v
        for k, v in r.file_inputs.get(address, {}).items()
        if not (suite.baseline and k == f"file:{suite.baseline}")
    }


def _suite_endpoint(r: _Resolver, spec: LoadedSpec, index: int, entry: SuiteEndpoint) -> None:
    """An endpoint a suite names: its own `Evaluation/<suite>/<name>`, waiting for the suite
    (and, for a Deployment, ordered after it: asked where it is deployed at apply)."""
    name = contestant_name(entry)
    address = f"Evaluation/{spec.name}/{name}"
    evaluation = EvaluationSpec(
        suite=spec.name, subject=f"endpoint:{name}", endpoint=entry.model_dump(mode="json")
    )
    r._node(spec, address, "Evaluation", evaluation)
    loc: Loc = ("spec", "endpoints", index)
    r.edges.append(Edge(address, f"EvalSuite/{spec.name}", True, spec, loc))
    if isinstance(entry, DeploymentContestant):
        r._named_ref(spec, (*loc, "deployment"), entry.deployment, "Deployment", address, False)


def _check_dataset(r: _Resolver, spec: LoadedSpec) -> None:
    """A Dataset: its sources, its tokenizer and its steps."""
    address = r._node(spec)
    ds = spec.resource.spec
    for i, src in enumerate(ds.sources):
        _dataset_source(r, spec, ("spec", "sources", i), src, address)
    if ds.tokenizer:
        r._model_ref(spec, ("spec", "tokenizer"), ds.tokenizer, address)
    for i, step in enumerate(ds.steps):
        _dataset_step(r, spec, ("spec", "steps", i), step, address)


def _dataset_source(r: _Resolver, spec: LoadedSpec, loc: Loc, src: Source, address: str) -> None:
    """A file (its rows count in the estimate), another Dataset, a collected-data store, or
    an Arena."""
    if isinstance(src, FileSource):
        r._path(spec, (*loc, "path"), src.path, address)
        r.row_files.setdefault(address, []).append(Path(src.path).as_posix())
    elif isinstance(src, DatasetSource):
        r._named_ref(spec, (*loc, "dataset"), src.dataset, "Dataset", address, True)
    elif isinstance(src, ArenaSource):
        # Not waited for, nor required to be a spec: the votes the registry holds when the
        # Dataset is prepared are its rows (an Arena may compare a model trained on this very
        # Dataset; `llmops arena import` stores votes of an arena no spec names). Their
        # digest now is an input, so the plan sees new votes.
        _observed_input(r, spec, src, f"arena:{src.arena}", address)
    elif src.store not in r.collect_stores:
        r._diag(
            spec,
            (*loc, "store"),
            f"no Deployment collects into '{src.store}'",
            did_you_mean(src.store, r.collect_stores) or "set collect.into on a Deployment",
        )
    else:
        # The rows collected so far are an input too: the plan sees newly collected ones.
        _observed_input(r, spec, src, f"collected:{src.store}", address)


def _observed_input(r: _Resolver, spec: LoadedSpec, src: Source, key: str, address: str) -> None:
    """The digest of the rows an arena or collected source gives now, as the Dataset's input."""
    if r.observe_source is None:
        return
    digest = r.observe_source(spec.resource.spec.format, src)
    if digest:
        r.file_inputs.setdefault(address, {})[key] = digest


def _dataset_step(r: _Resolver, spec: LoadedSpec, loc: Loc, step: Step, address: str) -> None:
    """A step's models; a decontaminate step's suites, whose files become the Dataset's inputs."""
    tok = getattr(step, "tokenizer", None)
    if tok:
        r._model_ref(spec, (*loc, "tokenizer"), tok, address)
    model = getattr(step, "model", None)
    if model:
        r._model_ref(spec, (*loc, "model"), model, address)
    teacher = getattr(step, "endpoint", None)
    if isinstance(teacher, DeploymentContestant):  # asked where it is deployed: order only
        r._named_ref(spec, (*loc, "endpoint", "deployment"), teacher.deployment, "Deployment",
                     address, False)  # fmt: skip
    if getattr(step, "step", "") == "decontaminate":
        wanted = step.suites or sorted(r.suite_files)
        for j, suite_name in enumerate(step.suites):
            if suite_name not in r.suite_files:
                r._diag(
                    spec,
                    (*loc, "suites", j),
                    f"unknown EvalSuite '{suite_name}'",
                    did_you_mean(suite_name, r.suite_files),
                )
        for suite_name in wanted:
            r.file_inputs.setdefault(address, {}).update(r.suite_files.get(suite_name, {}))


def _check_experiment(r: _Resolver, spec: LoadedSpec) -> None:
    """An Experiment: each run (a resource of its own) and the control's evaluation."""
    runs = r.runs.get(spec.name, [])
    for run in runs:
        _check_run(r, spec, run)
    _check_control(r, spec, runs)


def _check_run(r: _Resolver, spec: LoadedSpec, run: Run) -> None:
    """A run: its base model, dataset and probes, and the evaluation of what it trains."""
    address = f"Experiment/{spec.name}/{run.name}"
    cfg = ExperimentSpec.model_validate(run.config)
    # A scan nobody asked for is not part of the spec (older lock files lack it).
    config = {k: v for k, v in run.config.items() if k != "inspect" or v}
    r._node(spec, address, "Experiment", cfg, config)
    r._model_ref(spec, ("spec", "base_model"), cfg.base_model, address)
    if cfg.start_from:
        _start_from(r, spec, run, cfg, address)
    if r._named_ref(spec, ("spec", "dataset"), cfg.dataset, "Dataset", address, True):
        _check_objective_format(r, spec, cfg)
    probes = cfg.inspect.probes if cfg.inspect else None
    probes_loc: Loc = ("spec", "inspect", "probes")
    if probes and not r._escapes(spec, probes_loc, probes, False) and r.files.info(probes) is None:
        # Checked, not digested: a scan's probes never retrain the run.
        r._diag(
            spec,
            ("spec", "inspect", "probes"),
            f"'{probes}' does not exist",
            "check the path; it is relative to the repository root",
        )
    suite_loc: Loc = ("spec", "eval_suite")
    # Training does not wait for the suite (no edge run -> suite); the run's evaluation does.
    if cfg.eval_suite and r._known(spec, suite_loc, cfg.eval_suite, "EvalSuite") is not None:
        evaluation = _evaluation(r, spec, run.name, cfg.eval_suite, address, cfg)
        r.edges.append(Edge(evaluation, address, True, spec, ("spec",)))


def _run_loc(run: Run, key: str) -> Loc:
    """Where a run's field is written: its variant's override, the sweep, or the spec."""
    if key in run.overrides:
        if run.name.startswith("sweep-"):
            return ("spec", "sweep", key)
        return ("spec", "variants", run.name, key)
    return ("spec", key)


def _start_from(
    r: _Resolver, spec: LoadedSpec, run: Run, cfg: ExperimentSpec, address: str
) -> None:
    """A run that starts from another run's result: that run exists, is another run, stores
    full weights and trains the same base model; it trains first, and its digest is an
    input of this run's (a change to it retrains this one). Cycles are found with the graph."""
    loc = _run_loc(run, "start_from")
    upstream_name = str(cfg.start_from)
    runs = {each.name: each for each in r.runs.get(spec.name, [])}
    upstream = runs.get(upstream_name)
    if upstream_name == run.name:
        r._diag(
            spec,
            loc,
            f"run '{run.name}' starts from itself",
            "name the run whose result this one continues (e.g. the SFT run), or remove start_from",
        )
        return
    if upstream is None:
        r._diag(
            spec,
            loc,
            f"start_from: experiment '{spec.name}' has no run '{upstream_name}'",
            did_you_mean(upstream_name, runs) or f"runs: {', '.join(sorted(runs))}",
        )
        return
    before = ExperimentSpec.model_validate(upstream.config)
    if split_ref(before.base_model)[0] != split_ref(cfg.base_model)[0]:
        r._diag(
            spec,
            _run_loc(run, "base_model") if "base_model" in run.overrides else loc,
            f"run '{run.name}' starts from run '{upstream_name}', which trains base model "
            f"'{before.base_model}', but names base model '{cfg.base_model}'",
            "a run continues the model family it starts from: give both runs the same base_model",
        )
        return
    if before.training.method != "full" and not before.training.merge:
        r._diag(
            spec,
            loc,
            f"run '{run.name}' starts from run '{upstream_name}', which registers a LoRA "
            "adapter only; a run starts from full weights",
            f"set training.merge: true on run '{upstream_name}' (or train it with method full)",
        )
        return
    r.edges.append(Edge(address, f"Experiment/{spec.name}/{upstream_name}", True, spec, loc))


# Dataset formats each preference objective trains on (runners/train/preference.py FORMATS).
PREFERENCE_FORMATS = {
    "dpo": ("preference",),
    "orpo": ("preference",),
    "kto": ("unpaired", "preference"),
}


def _check_objective_format(r: _Resolver, spec: LoadedSpec, cfg: ExperimentSpec) -> None:
    """A preference objective needs a Dataset of its rows: said at validate, not mid-run."""
    allowed = PREFERENCE_FORMATS.get(cfg.training.objective)
    dataset = r.by_kind.get("Dataset", {}).get(split_ref(cfg.dataset)[0])
    if allowed is None or dataset is None:
        return
    fmt = dataset.resource.spec.format  # type: ignore[attr-defined]
    if fmt not in allowed:
        r._diag(
            spec,
            ("spec", "training", "objective"),
            f"objective '{cfg.training.objective}' trains on {' or '.join(allowed)} rows, but "
            f"Dataset '{dataset.name}' has format '{fmt}'",
            f"use a Dataset with format {allowed[0]}, or objective sft",
        )


def _check_control(r: _Resolver, spec: LoadedSpec, runs: list[Run]) -> None:
    """A control run must exist; a control model is evaluated on the default run's suite."""
    control = spec.resource.spec.control
    if control and control.run:
        names = {run.name for run in runs}
        if runs and control.run not in names:
            r._diag(
                spec,
                ("spec", "control", "run"),
                f"no run '{control.run}' in this experiment",
                did_you_mean(control.run, names) or f"runs: {', '.join(sorted(names))}",
            )
        return
    if not runs:
        return
    default = ExperimentSpec.model_validate(runs[0].config)
    control_model = control.model if control and control.model else default.base_model
    loc: Loc = ("spec", "control", "model") if control else ("spec", "base_model")
    if default.eval_suite and control_model:
        subject = f"model:{control_model}"
        evaluation = _evaluation(r, spec, "control", default.eval_suite, subject, default)
        r._model_ref(spec, loc, control_model, evaluation)


def _evaluation(
    r: _Resolver, spec: LoadedSpec, label: str, suite: str, subject: str, cfg: ExperimentSpec
) -> str:
    """Add `Evaluation/<experiment>/<label>` of `subject` on `suite`, waiting for the suite;
    run where the experiment's run `cfg` trains when that is a Kubernetes Job."""
    address = f"Evaluation/{spec.name}/{label}"
    taken = r.nodes.get(address)
    if taken is not None and taken.source is not spec:
        r._diag(
            spec,
            ("metadata", "name"),
            f"{address} is both this experiment's evaluation and an endpoint that EvalSuite "
            f"'{taken.source.name}' names",
            "rename the suite's endpoint ('name') or the experiment's run",
        )
    executor = cfg.training.executor if cfg.training.executor.type == "kubernetes" else None
    evaluation = EvaluationSpec(suite=suite, subject=subject, executor=executor)
    r._node(spec, address, "Evaluation", evaluation)
    r.edges.append(Edge(address, f"EvalSuite/{suite}", True, spec, ("spec", "eval_suite")))
    return address


def _check_deployment(r: _Resolver, spec: LoadedSpec) -> None:
    """A Deployment: its model and its smoke suite."""
    address = r._node(spec)
    dep = spec.resource.spec
    r._model_ref(spec, ("spec", "model"), dep.model, address)
    if dep.embeddings.enabled and dep.embeddings.model:  # pulled by the deploy like the model
        r._model_ref(spec, ("spec", "embeddings", "model"), dep.embeddings.model, address)
    if dep.smoke_suite:
        # The readiness check reads the suite at rollout; a new suite alone is no rollout.
        r._named_ref(spec, ("spec", "smoke_suite"), dep.smoke_suite, "EvalSuite", address, False)


def _check_arena(r: _Resolver, spec: LoadedSpec) -> None:
    """An Arena: its models, its judge and its prompts (a file or a Dataset)."""
    address = r._node(spec)
    arena = spec.resource.spec
    for i, entry in enumerate(arena.models):
        if isinstance(entry, str):
            r._model_ref(spec, ("spec", "models", i), entry, address)
        elif isinstance(entry, DeploymentContestant):
            # asked where it is deployed now: it orders the arena after it, no digest input
            loc: Loc = ("spec", "models", i, "deployment")
            r._named_ref(spec, loc, entry.deployment, "Deployment", address, False)
    if arena.judge and arena.judge.type == "model":  # a metric judge has no model
        r._model_ref(spec, ("spec", "judge", "model"), arena.judge.model, address)
    prompts = arena.prompts
    if isinstance(prompts, FilePrompts):
        r._path(spec, ("spec", "prompts", "path"), prompts.path, address)
    else:
        r._named_ref(
            spec, ("spec", "prompts", "dataset"), prompts.dataset, "Dataset", address, True
        )


# A pipeline step's fields that name a spec, and the kind they name.
PIPELINE_REFS = (
    ("dataset", "Dataset"),
    ("experiment", "Experiment"),
    ("suite", "EvalSuite"),
    ("against", "Deployment"),
    ("deployment", "Deployment"),
    ("arena", "Arena"),
)


def _check_pipeline(r: _Resolver, spec: LoadedSpec) -> None:
    """A Pipeline: the specs its steps name (ordering only: a pipeline reruns nothing)."""
    address = r._node(spec)
    for i, step in enumerate(spec.resource.spec.steps):
        _pipeline_step(r, spec, ("spec", "steps", i), step, address)


def _pipeline_step(
    r: _Resolver, spec: LoadedSpec, loc: Loc, step: PipelineStep, address: str
) -> None:
    """A step's references, and its experiment's run."""
    for field_name, kind in PIPELINE_REFS:
        value = getattr(step, field_name, None)
        if value:
            r._named_ref(spec, (*loc, field_name), value, kind, address, False)
    run = getattr(step, "run", None)
    experiment = getattr(step, "experiment", None)
    names = {each.name for each in r.runs.get(experiment or "", [])}
    if experiment and names and run not in names:
        r._diag(
            spec,
            (*loc, "run"),
            f"experiment '{experiment}' has no run '{run}'",
            did_you_mean(str(run), names),
        )


# The checks, in the order they run. The order is part of the result: diagnostics come out
# kind by kind in it (specs by name within a kind), the edges are added in it (a cycle is
# reported from the first edge found), and later kinds read what earlier ones gathered on the
# resolver: `models` and `collect_stores` are set by check() before any check runs,
# `suite_files` by the EvalSuites before the Datasets' decontaminate steps read it.
CHECKS: dict[str, Callable[[_Resolver, LoadedSpec], None]] = {
    "Model": _check_model,
    "EvalSuite": _check_eval_suite,
    "Dataset": _check_dataset,
    "Experiment": _check_experiment,
    "Deployment": _check_deployment,
    "Arena": _check_arena,
    "Pipeline": _check_pipeline,
}

# Checks across all the specs of a kind, run right after that kind's own checks.
CHECKS_AFTER: dict[str, Callable[[_Resolver], None]] = {
    "Deployment": _Resolver._check_local_ports,
}


def resolve(
    specs: list[LoadedSpec],
    root: Path,
    overrides: list[Override] | None = None,
    files: FileDigests | None = None,
    code: CodeTable | None = None,
    observe_source: SourceObserver | None = None,
) -> Resolution:
    """Compose experiments, check references and paths, build the graph and digests.

    `code` is the runners' code identities (runner -> CodeIdentity); by default computed from
    this installation's source. Tests pin it (`pinned_identities`) or point it at a copy.
    `observe_source` digests what a Dataset's arena and collected sources give now.
    """
    digests = files or FileDigests(root)
    table = code if code is not None else code_identities(cache_dir=digests.cache_dir)
    resolver = _Resolver(specs, root, overrides or [], digests, table, observe_source)
    resolver.compose()
    resolver.check()
    digests.save()
    if resolver.diagnostics:
        return Resolution(None, resolver.diagnostics, resolver.runs)
    waves = resolver.graph()
    if waves is None:
        return Resolution(None, resolver.diagnostics, resolver.runs)
    return Resolution(resolver.build(waves), resolver.diagnostics, resolver.runs)
