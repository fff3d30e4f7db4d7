"""Loading, composition: Experiment documents -> one resolved config per run (hydra)."""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, grammar_parser
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser
from pydantic import ValidationError

from controller.api.experiment import DEFAULT_RUN, ExperimentSpec
from controller.load.diagnostics import Diagnostic, did_you_mean
from controller.load.loader import LoadedSpec
from controller.load.secrets import SECRET_HINT, find_secret
from controller.load.validate import format_loc, schema_fields
from controller.load.yaml_source import Loc, parse_documents, walk_strings

PRESETS_DIR = Path("specs/experiments/_presets")
COMMAND_LINE = "<command line>"
DOCUMENT_ONLY_FIELDS = ("defaults", "variants", "sweep")
RESOLVER_HINT = (
    "resolvers (oc.env, oc.decode, hydra:, ...) can read the environment of the job that runs "
    "llmops, and what they return lands in plans, pull-request comments and llmops.lock; "
    "refer to other fields only (${training.lora.r}), write the value, or escape a literal "
    "'${' as '\\${'"
)


@dataclass(frozen=True)
class Override:
    """A `-o [experiment:]key=value` from the command line."""

    text: str
    key: str
    value: str
    experiment: str | None = None

    @property
    def hydra_text(self) -> str:
        return f"{self.key}={self.value}"


@dataclass
class Run:
    """One resolved run of an experiment: its name, config and what produced it."""

    experiment: str
    name: str
    config: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


def parse_overrides(texts: list[str]) -> tuple[list[Override], list[Diagnostic]]:
    """Parse `-o` values: 'key=value' for every experiment, 'name:key=value' for one."""
    overrides: list[Override] = []
    diagnostics: list[Diagnostic] = []
    parser = OverridesParser.create()
    for text in texts:
        experiment = None
        body = text
        match = re.match(r"^([a-z0-9][a-z0-9-]*):(.+)$", text)
        if match and "=" not in match.group(1):
            experiment, body = match.group(1), match.group(2)
        try:
            parsed = parser.parse_override(body)
        except HydraException as err:
            diagnostics.append(_cli_diag(text, f"cannot parse override: {err}"))
            continue
        if parsed.is_sweep_override():
            diagnostics.append(
                _cli_diag(
                    text, "a sweep override is not allowed here", "declare sweeps in spec.sweep"
                )
            )
            continue
        if parsed.is_delete() or parsed.is_add() or parsed.is_force_add():
            diagnostics.append(_cli_diag(text, "write overrides as key=value, without + or ~"))
            continue
        key = parsed.get_key_element()
        overrides.append(Override(text, key, parsed.get_value_element_as_str(), experiment))
    return overrides, diagnostics


def _cli_diag(text: str, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(COMMAND_LINE, 1, 1, f"-o {text}", message, hint)


def compose_experiment(
    spec: LoadedSpec, root: Path, overrides: list[Override]
) -> tuple[list[Run], list[Diagnostic]]:
    """Every run of one experiment: the spec as written ('default'), variants, sweep points."""
    document = spec.doc.data["spec"]
    name = spec.name
    mine = [o for o in overrides if o.experiment in (None, name)]
    base_doc = {k: v for k, v in document.items() if k not in DOCUMENT_ONLY_FIELDS}
    # Nothing is composed or resolved while any text calls a resolver: hydra resolves a
    # preset's defaults list while composing, OmegaConf the values when the runs are built.
    refused = _resolver_calls_in_spec(spec, mine)
    if document.get("defaults") or mine:
        refused += _resolver_calls_in_presets(root)
    if refused:
        return [], refused
    try:
        base = _compose_base(base_doc, document.get("defaults", []), root, mine)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        return [], [_compose_diag(spec, err, root)]
    composed = OmegaConf.to_container(base, resolve=False)
    for loc, value in walk_strings(composed):
        calls = resolver_calls(value)
        if calls:  # whatever brought it in, it is never resolved
            line, col = spec.position(("spec", "defaults"))
            where = format_loc(("spec", *loc))
            return [], [_resolver_diag(spec.doc.file, line, col, where, calls)]

    runs: list[Run] = []
    diagnostics: list[Diagnostic] = []
    seen: set[tuple[str, int, int, str, str]] = set()
    variant_sets: list[tuple[str, dict[str, Any], tuple[str | int, ...]]] = [
        (DEFAULT_RUN, {}, ("spec",))
    ]
    variant_sets += [
        (vname, dict(vals or {}), ("spec", "variants", vname))
        for vname, vals in document.get("variants", {}).items()
    ]
    variant_sets += [(sname, vals, ("spec", "sweep")) for sname, vals in sweep_points(document)]
    for run_name, changes, loc in variant_sets:
        config = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
        OmegaConf.set_struct(config, False)
        try:
            for key, value in changes.items():
                OmegaConf.update(config, key, value, merge=True, force_add=True)
            resolved = OmegaConf.to_container(config, resolve=True)
        except (OmegaConfBaseException, ValueError) as err:
            line, col = spec.position(loc)
            diagnostics.append(
                Diagnostic(spec.doc.file, line, col, format_loc(loc), _short(err), "")
            )
            continue
        assert isinstance(resolved, dict)
        problems = _secrets_in_run(spec, run_name, resolved, changes, loc)
        problems += _validate_run(spec, run_name, resolved, changes, loc, mine)
        for problem in problems:
            # An error in the shared part shows up in every run; report it once.
            key = (
                problem.file,
                problem.line,
                problem.col,
                problem.path,
                problem.message.split(" (run '")[0],
            )
            if key not in seen:
                seen.add(key)
                diagnostics.append(problem)
        if not problems:
            canonical = ExperimentSpec.model_validate(resolved).model_dump(mode="json")
            runs.append(Run(name, run_name, canonical, dict(changes)))
    return runs, diagnostics


def resolver_calls(value: str) -> list[str]:
    """The resolvers `value` calls ('${oc.env:X}' -> ['oc.env']), nested calls included; none
    for plain text, escaped '\\${' and references to other fields ('${training.lora.r}')."""
    if "${" not in value:
        return []
    try:
        tree = grammar_parser.parse(value)
    except GrammarParseError:
        return []  # not an interpolation OmegaConf can resolve either: it fails on its own
    names: list[str] = []
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            names.append(node.resolverName().getText())
        stack.extend(getattr(node, "children", None) or [])
    return sorted(set(names))


def _resolver_diag(file: str, line: int, col: int, where: str, calls: list[str]) -> Diagnostic:
    called = ", ".join(f"'{c}'" for c in calls)
    return Diagnostic(
        file,
        line,
        col,
        where,
        f"interpolation calls the resolver {called}; only references to other fields are resolved",
        RESOLVER_HINT,
    )


def _resolver_calls_in_spec(spec: LoadedSpec, overrides: list[Override]) -> list[Diagnostic]:
    """Resolver calls in the Experiment document (variants and sweeps included) and in the
    command line's overrides."""
    found = []
    for loc, value in walk_strings(spec.doc.data["spec"], ("spec",)):
        calls = resolver_calls(value)
        if calls:
            line, col = spec.position(loc)
            found.append(_resolver_diag(spec.doc.file, line, col, format_loc(loc), calls))
    for override in overrides:
        calls = resolver_calls(override.value)
        if calls:
            found.append(_resolver_diag(COMMAND_LINE, 1, 1, f"-o {override.text}", [*calls]))
    return found


def _resolver_calls_in_presets(root: Path) -> list[Diagnostic]:
    """Resolver calls in any preset file (presets are not spec documents, so not scanned as
    specs; a defaults list or an override may pick any of them)."""
    presets = root / PRESETS_DIR
    if not presets.is_dir():
        return []
    found = []
    for path in sorted(presets.rglob("*.yaml")):
        shown = path.relative_to(root).as_posix()
        documents, _ = parse_documents(path.read_text(encoding="utf-8", errors="replace"), shown)
        for document in documents:
            for loc, value in walk_strings(document.data):
                calls = resolver_calls(value)
                if calls:
                    line, col = document.position(loc)
                    found.append(_resolver_diag(shown, line, col, format_loc(loc), calls))
    return found


def _secrets_in_run(
    spec: LoadedSpec,
    run_name: str,
    resolved: dict[str, Any],
    changes: dict[str, Any],
    loc: tuple[str | int, ...],
) -> list[Diagnostic]:
    """Token-shaped values in the composed run: the raw-text check sees each file alone, and a
    preset, an override or a reference can bring a secret into a field the plan shows."""
    found = []
    suffix = f" (run '{run_name}')" if run_name != DEFAULT_RUN else ""
    for path, value in walk_strings(resolved):
        field = path[-1] if path else None
        label = find_secret(value, field if isinstance(field, str) else None)
        if not label:
            continue
        dotted = ".".join(str(p) for p in path)
        where: Loc = ("spec", *path)
        for key in changes:
            if dotted == key or dotted.startswith(key + "."):
                where = (*loc, key)
        line, col = spec.position(where)
        found.append(
            Diagnostic(
                spec.doc.file,
                line,
                col,
                format_loc(("spec", *path)),
                f"{label} in the composed value of this field{suffix}",
                SECRET_HINT,
            )
        )
    return found


def _compose_base(
    base_doc: dict[str, Any], defaults: list[Any], root: Path, overrides: list[Override]
) -> DictConfig:
    """Hydra composition of the spec with its defaults list and command-line overrides."""
    if not defaults and not overrides:
        return OmegaConf.create(base_doc)
    presets = root / PRESETS_DIR
    groups = {p.name for p in presets.iterdir() if p.is_dir()} if presets.is_dir() else set()
    hydra_overrides = [o.hydra_text if o.key in groups else f"++{o.hydra_text}" for o in overrides]
    node = dict(base_doc)
    node["defaults"] = [*defaults, "_self_"] if "_self_" not in defaults else list(defaults)
    config_name = "llmops-experiment-" + hashlib.sha256(repr(node).encode()).hexdigest()[:16]
    ConfigStore.instance().store(name=config_name, node=node)
    GlobalHydra.instance().clear()
    context = (
        initialize_config_dir(version_base="1.3", config_dir=str(presets.resolve()))
        if presets.is_dir()
        else initialize(version_base="1.3", config_path=None)
    )
    with context:
        cfg = compose(config_name=config_name, overrides=hydra_overrides)
    GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    return cfg


def sweep_points(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The cartesian product of spec.sweep, one named run per point."""
    sweep = document.get("sweep") or {}
    if not sweep:
        return []
    keys = sorted(sweep)
    points = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        changes = dict(zip(keys, values, strict=True))
        points.append((sweep_run_name(changes), changes))
    return points


def sweep_run_name(changes: dict[str, Any]) -> str:
    """A readable, stable name for a sweep point: adding values never renames the others."""
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in sorted(changes.items())]
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    digest = hashlib.sha256(repr(sorted(changes.items())).encode()).hexdigest()[:6]
    name = f"sweep-{slug}"
    if len(name) > 63 or not slug:
        name = f"sweep-{slug[:48].strip('-')}-{digest}"
    return name


def _validate_run(
    spec: LoadedSpec,
    run_name: str,
    resolved: dict[str, Any],
    changes: dict[str, Any],
    loc: tuple[str | int, ...],
    overrides: list[Override],
) -> list[Diagnostic]:
    try:
        ExperimentSpec.model_validate(resolved)
    except ValidationError as err:
        out = []
        for error in err.errors(include_url=False):
            out.append(_run_error(spec, run_name, error, changes, loc, overrides))
        return out
    return []


def _run_error(
    spec: LoadedSpec,
    run_name: str,
    error: dict[str, Any],
    changes: dict[str, Any],
    loc: tuple[str | int, ...],
    overrides: list[Override],
) -> Diagnostic:
    err_loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in err_loc)
    message = str(error["msg"]).removeprefix("Value error, ")
    hint = ""
    if error["type"] == "extra_forbidden":
        field_name = str(err_loc[-1])
        message = f"unknown field '{field_name}'"
        allowed = schema_fields(
            ExperimentSpec.model_json_schema(by_alias=True, mode="validation"), err_loc[:-1]
        )
        hint = did_you_mean(field_name, allowed)
    elif error["type"] == "missing":
        message = f"missing required field '{err_loc[-1]}'"
        hint = f"set it in the spec or in a preset under {PRESETS_DIR.as_posix()}/"
    suffix = f" (run '{run_name}')" if run_name != DEFAULT_RUN else ""
    for override in overrides:
        if dotted == override.key or dotted.startswith(override.key + "."):
            return Diagnostic(COMMAND_LINE, 1, 1, f"-o {override.text}", message + suffix, hint)
    for key in changes:
        if dotted == key or dotted.startswith(key + "."):
            where = (*loc, key)
            line, col = spec.position(where, key=True)
            return Diagnostic(spec.doc.file, line, col, format_loc(where), message + suffix, hint)
    where = ("spec", *err_loc)
    line, col = spec.position(where, key=error["type"] == "extra_forbidden")
    return Diagnostic(spec.doc.file, line, col, format_loc(where), message + suffix, hint)


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _compose_diag(spec: LoadedSpec, err: Exception, root: Path) -> Diagnostic:
    text = _short(err)
    hint = ""
    match = re.search(r"Could not find '([^']+)'", str(err))
    if match:
        missing = match.group(1)
        group, _, option = missing.rpartition("/")
        folder = root / PRESETS_DIR / group
        options = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        hint = did_you_mean(option, options) or (f"create {PRESETS_DIR.as_posix()}/{missing}.yaml")
        text = f"preset '{missing}' not found"
        line, col = spec.position(("spec", "defaults"))
        return Diagnostic(spec.doc.file, line, col, "spec.defaults", text, hint)
    line, col = spec.position(("spec",))
    return Diagnostic(
        spec.doc.file, line, col, "spec", f"cannot compose the experiment: {text}", hint
    )
