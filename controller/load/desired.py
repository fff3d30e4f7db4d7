"""Loading, desired state: specs on disk -> `Loaded` (specs, runs, DesiredState, diagnostics).

The whole of the load layer behind one call; every command that needs the specs starts here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.load.code import CodeTable
from controller.load.compose import Run, parse_overrides
from controller.load.diagnostics import Diagnostic, has_errors, sort_diagnostics
from controller.load.files import FileDigests
from controller.load.loader import LoadedSpec, load_specs
from controller.load.resolve import SourceObserver, resolve
from controller.plan.types import DesiredState


@dataclass
class Loaded:
    root: Path
    specs: list[LoadedSpec] = field(default_factory=list)
    desired: DesiredState | None = None
    runs: dict[str, list[Run]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.desired is not None and not has_errors(self.diagnostics)


def load_desired(
    root: Path,
    paths: list[Path] | None = None,
    overrides: list[str] | None = None,
    cache_dir: Path | None = None,
    code: CodeTable | None = None,
    observe_source: SourceObserver | None = None,
) -> Loaded:
    """Specs -> desired state, with every problem collected as a diagnostic.

    `cache_dir` (the state folder's cache) keeps parsed specs and file digests between runs.
    `code` pins the runners' code identities (tests); by default they are computed.
    `observe_source` digests what Datasets' arena and collected sources give now (the layer
    above state passes controller/observe/sources.py's); without it they add no input.
    """
    parsed, override_problems = parse_overrides(overrides or [])
    loaded = load_specs(root, paths, cache_dir)
    result = Loaded(root, loaded.specs, diagnostics=[*override_problems, *loaded.diagnostics])
    if has_errors(result.diagnostics):
        result.diagnostics = sort_diagnostics(result.diagnostics)
        return result
    files = FileDigests(root, cache_dir)
    resolution = resolve(loaded.specs, root, parsed, files, code, observe_source)
    result.diagnostics = sort_diagnostics([*result.diagnostics, *resolution.diagnostics])
    result.runs = resolution.runs
    result.desired = resolution.desired
    return result
