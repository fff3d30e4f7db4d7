"""Runner `deploy`, runtime modules: the project modules the serving runtime imports, pinned.

Serving needs a small part of llmops. Starting from every module of the entry package
(`runners.serve`), the imports are followed through the source (ast, no execution): project
modules are copied into the image, third-party ones become requirements pinned to the
versions installed here, the ones the tests ran with.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

from runners.deploy.release import DeployError

# Installed from the PyTorch CPU index before the requirements, never from them.
PREINSTALLED = frozenset({"torch"})
# The project's packages: copied, never pinned (an entry in controller imports runners.errors).
PROJECT = ("runners", "controller")
# Backends imported only by one runtime: left out of images of the other.
RUNTIME_ONLY = {"llama_cpp": "llama-cpp"}


@dataclass(frozen=True)
class RuntimeModules:
    files: list[str]  # paths relative to the source root, sorted
    requirements: list[str]  # 'dist==version', sorted
    left_out: dict[str, str]  # lazily imported outside the entry package -> where


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _context(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str:
    """'typing' inside `if TYPE_CHECKING:` (never run), 'lazy' inside a function, else 'eager'."""
    where = "eager"
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return "typing"
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            where = "lazy"
    return where


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, imported lazily) for every import that can run."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as err:
        raise DeployError(f"{path}:{err.lineno}: cannot parse: {err.msg}") from err
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        where = _context(node, parents)
        if where == "typing":
            continue
        lazy = where == "lazy"
        if isinstance(node, ast.Import):
            found.extend((alias.name, lazy) for alias in node.names)
            continue
        if node.level:
            package = module.split(".")
            drop = node.level - 1 if is_package else node.level
            base = ".".join(package[: len(package) - drop])
        else:
            base = ""
        target = ".".join(part for part in (base, node.module or "") if part)
        found.append((target, lazy))
        # `from pkg import mod` may name a submodule; checked against the tree later.
        found.extend((f"{target}.{a.name}", lazy) for a in node.names if a.name != "*")
    return found


def collect(root: Path, entry: str, runtime: str) -> RuntimeModules:
    """Project files and pinned requirements for running `python -m <entry>` from `root`.

    Every import in the entry package counts. Elsewhere only imports that run when the
    module is imported do: a function's own imports (runners.data reads Parquet through
    `datasets` that way) serve code that the runtime does not call; they are listed in
    `left_out` so a reviewer can see them.
    """
    top = entry.split(".")[0]
    entry_dir = root.joinpath(*entry.split("."))
    if not (entry_dir / "__init__.py").is_file():
        raise DeployError(
            f"the serving runtime {entry} is not in {root} ({entry_dir} has no __init__.py); "
            "render from a checkout of llmops that has it"
        )
    queue = [_module_name(root, p) for p in sorted(entry_dir.rglob("*.py"))]
    seen: set[str] = set()
    files: set[Path] = set()
    third_party: dict[str, str] = {}  # top-level module -> first file importing it
    left_out: dict[str, str] = {}
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is None:
            continue
        files.add(path)
        # A module's packages run their __init__ first.
        parent = module.rpartition(".")[0]
        if parent:
            queue.append(parent)
        inside = module == entry or module.startswith(f"{entry}.")
        where = path.relative_to(root).as_posix()
        for name, lazy in _imports(path, module):
            head = name.split(".")[0]
            if not head or head in sys.stdlib_module_names or head == "__future__":
                continue
            if lazy and not inside:
                left_out.setdefault(name if head in (top, *PROJECT) else head, where)
            elif head == top or head in PROJECT:
                queue.append(name)
            else:
                third_party.setdefault(head, where)
    for folder in {path.parent for path in files}:
        files.update(
            data
            for data in folder.iterdir()
            if data.is_file() and data.suffix not in (".py", ".pyc", ".pyo")
        )
    names = {_module_name(root, p) for p in files if p.suffix == ".py"}
    return RuntimeModules(
        files=sorted(path.relative_to(root).as_posix() for path in files),
        requirements=_pins(third_party, runtime),
        left_out={
            k: v for k, v in sorted(left_out.items()) if k not in third_party and k not in names
        },
    )


def _pins(modules: dict[str, str], runtime: str) -> list[str]:
    owners = importlib.metadata.packages_distributions()
    pins: set[str] = set()
    for module, where in sorted(modules.items()):
        if module in PREINSTALLED or RUNTIME_ONLY.get(module, runtime) != runtime:
            continue
        dists = owners.get(module)
        if not dists:
            raise DeployError(
                f"{where} imports '{module}', which is not installed here, so its version "
                "cannot be pinned for the image; install it (pip install -e '.[llama-cpp]' "
                "for llama_cpp) and render again"
            )
        for dist in dists:
            pins.add(f"{dist}=={importlib.metadata.version(dist)}")
    return sorted(pins, key=str.lower)
