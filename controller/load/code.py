"""Loading, code identity: a content digest of the code each runner runs.

A resource's digest includes its runner's code identity, so a change to the code that
produces a result is a change of the result's digest, with no version string to bump. A
runner's code is every module of its package(s) (the `code` roots in the KINDS table) and
every project module they import, followed through the source (ast, no execution, lazy
imports included), plus the installed versions of the libraries that shape results
(torch, transformers, peft, lm-eval, datasets) that those modules import.

`CodeIdentity.files` maps each file (`runners/train/loop.py`) to its sha256 and each
library (`lib:torch`) to its version; the lock file records it once per code digest, so the
plan can name the file that changed. Computed once per process and source root (about 60
files), the import scan cached by file content under the state folder's cache.

Tests and golden cases inject a fixed table (`resolve(..., code=...)`, `pinned_identities`),
so they do not change every time a source file does.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.plan.digest import canonical_json, sha256_text
from controller.plan.kinds import KINDS

PROJECT_PACKAGES = ("runners",)  # what a runner may import of this project
SOURCE_ROOT = Path(__file__).resolve().parents[2]
# import name -> distribution whose version is part of the identity
LIBRARIES = {
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "lm_eval": "lm-eval",
    "datasets": "datasets",
}
IMPORTS_CACHE = "code-imports.json"
# Where the runners' source is read from, when not this installation's (a checkout's copy).
SOURCE_ENV = "LLMOPS_RUNNERS_SOURCE"


@dataclass(frozen=True)
class CodeIdentity:
    """One runner's code: its digest and what it was computed from."""

    digest: str
    files: Mapping[str, str] = field(default_factory=dict)  # path -> sha256; lib:<name> -> version


CodeTable = Mapping[str, CodeIdentity]  # runner -> identity

_computed: dict[Path, dict[str, CodeIdentity]] = {}


def pinned_identities(prefix: str = "") -> dict[str, CodeIdentity]:
    """A fixed table, `<runner>/1` for every runner: for golden tests and fixtures."""
    return {f.runner: CodeIdentity(f"{prefix}{f.runner}/1") for f in KINDS.values()}


def code_identities(
    source_root: Path | None = None, cache_dir: Path | None = None
) -> dict[str, CodeIdentity]:
    """runner -> CodeIdentity for every runner in KINDS, computed once per source root."""
    root = runners_source(source_root)
    if root not in _computed:
        _computed[root] = _Scanner(root, cache_dir).table()
    return _computed[root]


def runners_source(explicit: Path | None = None) -> Path:
    """The folder holding `runners/`: `explicit`, else $LLMOPS_RUNNERS_SOURCE, else this
    installation's source."""
    return (explicit or Path(os.environ.get(SOURCE_ENV) or SOURCE_ROOT)).resolve()


def forget_computed() -> None:
    """Drop the per-process table (a test that edits a copy of the source calls this)."""
    _computed.clear()


class _Scanner:
    def __init__(self, root: Path, cache_dir: Path | None) -> None:
        self.root = root
        self.cache_path = cache_dir / IMPORTS_CACHE if cache_dir else None
        self.cache: dict[str, list[str]] = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self.cache = json.loads(self.cache_path.read_text())
            except (OSError, ValueError):
                self.cache = {}
        self.dirty = False
        self.digests: dict[Path, str] = {}
        self.imports: dict[Path, list[str]] = {}
        self.versions: dict[str, str] = {}
        self.modules: dict[str, list[Path]] = {}

    def table(self) -> dict[str, CodeIdentity]:
        table: dict[str, CodeIdentity] = {}
        for facts in KINDS.values():
            if facts.runner not in table:
                table[facts.runner] = self.identity(facts.code)
        if self.dirty and self.cache_path:
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                self.cache_path.write_text(json.dumps(self.cache, sort_keys=True))
            except OSError:
                pass  # a cache only
        return table

    def identity(self, roots: tuple[str, ...]) -> CodeIdentity:
        pending = [f for module in roots for f in self._package_files(module)]
        seen: set[Path] = set()
        libraries: set[str] = set()
        while pending:
            path = pending.pop()
            if path in seen:
                continue
            seen.add(path)
            for name in self._imports(path):
                top = name.split(".")[0]
                if top in LIBRARIES:
                    libraries.add(LIBRARIES[top])
                elif top in PROJECT_PACKAGES:
                    pending.extend(self._module_files(name))
        files = {p.relative_to(self.root).as_posix(): self._digest(p) for p in seen}
        for dist in sorted(libraries):
            files[f"lib:{dist}"] = self._version(dist)
        files = dict(sorted(files.items()))
        return CodeIdentity(sha256_text(canonical_json(files)), files)

    def _version(self, dist: str) -> str:
        if dist not in self.versions:
            try:
                self.versions[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                self.versions[dist] = "absent"
        return self.versions[dist]

    def _package_files(self, module: str) -> list[Path]:
        base = self.root.joinpath(*module.split("."))
        if base.is_dir():
            return sorted(base.rglob("*.py")) + self._parents(module)
        return self._module_files(module)

    def _parents(self, module: str) -> list[Path]:
        parts = module.split(".")
        out = []
        for i in range(1, len(parts)):
            init = self.root.joinpath(*parts[:i], "__init__.py")
            if init.is_file():
                out.append(init)
        return out

    def _module_files(self, module: str) -> list[Path]:
        """The file of `module` and its packages' __init__ files (importing runs them)."""
        if module not in self.modules:
            self.modules[module] = self._find(module)
        return self.modules[module]

    def _find(self, module: str) -> list[Path]:
        parts = module.split(".")
        for i in range(len(parts), 0, -1):  # `from runners.x import name`: name may not be a module
            if i < len(parts) and ".".join(parts[:i]) in self.modules:
                return self.modules[".".join(parts[:i])]
            base = self.root.joinpath(*parts[:i])
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if candidate.is_file():
                    return [candidate, *self._parents(".".join(parts[:i]))]
        return []

    def _digest(self, path: Path) -> str:
        if path not in self.digests:
            self.digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self.digests[path]

    def _imports(self, path: Path) -> list[str]:
        if path in self.imports:
            return self.imports[path]
        digest = self._digest(path)
        found = self.cache.get(digest)
        if found is None:
            found = sorted(set(_scan(path, self._module_name(path))))
            self.cache[digest] = found
            self.dirty = True
        self.imports[path] = found
        return found

    def _module_name(self, path: Path) -> str:
        parts = list(path.relative_to(self.root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)


def _scan(path: Path, module: str) -> list[str]:
    """Every module `path` may import (`from a import b` gives a.b too: b may be a module)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError:
        return []  # the file's content is still part of the digest
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            found.append(prefix)
            found.extend(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
    return [name for name in found if name]
