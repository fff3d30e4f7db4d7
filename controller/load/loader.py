"""Loading, file layer: find spec files under specs/, parse and validate every document."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.api import FOLDER_KIND, Resource
from controller.load.diagnostics import Diagnostic
from controller.load.parse_cache import ParseCache
from controller.load.validate import validate_document
from controller.load.yaml_source import YamlDocument, parse_documents, size_diagnostic

SPEC_SUFFIXES = (".yaml", ".yml")
SPECS_DIR = "specs"


@dataclass
class LoadedSpec:
    """A validated spec and the YAML document it came from (for positions in diagnostics)."""

    resource: Resource
    doc: YamlDocument

    @property
    def kind(self) -> str:
        return self.resource.KIND

    @property
    def name(self) -> str:
        return self.resource.metadata.name

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"

    def position(self, loc: tuple[str | int, ...], *, key: bool = False) -> tuple[int, int]:
        return self.doc.position(loc, key=key)


@dataclass
class LoadResult:
    specs: list[LoadedSpec] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def discover(root: Path, paths: list[Path] | None = None) -> list[Path]:
    """Spec files under specs/ (or the given files and folders), sorted.

    Folders whose name starts with '_' or '.' hold presets and other non-spec YAML and are
    skipped, e.g. specs/experiments/_presets/.
    """
    targets = paths or [root / SPECS_DIR]
    found: set[Path] = set()
    for target in targets:
        if target.is_file():
            found.add(target)
            continue
        for path in target.rglob("*"):
            if path.suffix not in SPEC_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(target).parts
            if any(part.startswith(("_", ".")) for part in relative):
                continue
            found.add(path)
    return sorted(found)


def display_path(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def load_text(text: str, file: str, cache: ParseCache | None = None) -> LoadResult:
    """Parse and validate every document of one file's text."""
    result = LoadResult()
    documents = cache.get(text, file) if cache else None
    if documents is None:
        documents, diagnostics = parse_documents(text, file)
        result.diagnostics.extend(diagnostics)
        if cache and not diagnostics:
            cache.put(text, documents)
    for doc in documents:
        resource, problems = validate_document(doc)
        result.diagnostics.extend(problems)
        if resource is not None:
            result.specs.append(LoadedSpec(resource, doc))
    return result


def load_specs(
    root: Path, paths: list[Path] | None = None, cache_dir: Path | None = None
) -> LoadResult:
    """Load every spec file; problems are collected as diagnostics, never raised.

    Parsed documents are cached in `cache_dir` (by content) when loading the whole tree.
    """
    result = LoadResult()
    cache = ParseCache(cache_dir if paths is None else None)
    for path in discover(root, paths):
        shown = display_path(path, root)
        try:
            too_big = size_diagnostic(path.stat().st_size, shown)
            if too_big:  # refused before reading: a spec file is untrusted input
                result.diagnostics.append(too_big)
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            result.diagnostics.append(
                Diagnostic(shown, 1, 1, "", f"cannot read file: {err}", "save it as UTF-8 text")
            )
            continue
        loaded = load_text(text, shown, cache)
        result.diagnostics.extend(loaded.diagnostics)
        for spec in loaded.specs:
            result.diagnostics.extend(_folder_warning(spec, shown))
            result.specs.append(spec)
    cache.save()
    return result


def _folder_warning(spec: LoadedSpec, shown: str) -> list[Diagnostic]:
    parts = Path(shown).parts
    if len(parts) < 3 or parts[0] != SPECS_DIR or parts[1] not in FOLDER_KIND:
        return []
    expected = spec.resource.FOLDER
    if parts[1] == expected:
        return []
    line, col = spec.position(("kind",))
    return [
        Diagnostic(
            shown,
            line,
            col,
            "kind",
            f"a {spec.kind} spec in specs/{parts[1]}/",
            f"move it to specs/{expected}/ so people find it where they expect",
            severity="warning",
        )
    ]
