"""The built package as a user installs it: `python -m build` gives an sdist and a wheel; the
wheel goes into a fresh virtualenv outside the checkout, and its `llmops` starts a new specs
repository (`llmops init`) that validates, plans, applies (pull, prepare, train, evaluate,
promote, deploy) and serves a chat completion, all from the installed files.

Nothing is downloaded: the wheel is installed with --no-deps --no-index, and a .pth file puts
only the project virtualenv's site-packages (the third-party libraries) after the new
environment's own. That site-packages holds no `controller` or `runners` (the project's
editable install is a finder a .pth there activates, and a .pth line does not run the .pth
files of the folder it names), so the test checks that both import from the new environment.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from controller import __version__
from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import git
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

KEY = "sk-init-0123456789"
# What the code reads at run time that is not a module; every one must be in the wheel.
DATA_FILES = [
    "controller/ui/templates/base.html",
    "controller/ui/static/app.css",
    "controller/ui/static/vendor/uplot/uPlot.iife.min.js",
    "controller/state/registry/migrations/env.py",
    "controller/state/registry/migrations/script.py.mako",
    "controller/state/registry/migrations/versions/0001_initial_registry_schema.py",
    "controller/scaffold/templates/gitignore",
    "controller/scaffold/templates/specs/experiments/finetune.yaml",
    "controller/scaffold/templates/github/workflows/pull-request.yml",
    "runners/serve/__main__.py",
    "runners/train/__main__.py",
]


def run(
    args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist, then the wheel built from the unpacked sdist (what `python -m build` does)."""
    out = tmp_path_factory.mktemp("dist")
    built = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(PROJECT_ROOT)],
        cwd=out,
        env=dict(os.environ),
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = out.glob("llmops_gitops-*.whl")
    (sdist,) = out.glob("llmops_gitops-*.tar.gz")
    assert wheel.name == f"llmops_gitops-{__version__}-py3-none-any.whl"
    print(f"\nwheel {wheel.stat().st_size / 1e3:.0f} kB, sdist {sdist.stat().st_size / 1e3:.0f} kB")
    return wheel


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed (no editable checkout); the third-party
    libraries from the project's site-packages, torch included, through one .pth file."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    started = time.monotonic()
    created = run(
        [sys.executable, "-m", "venv", "--without-pip", str(folder)], cwd=folder.parent, env={}
    )
    assert created.returncode == 0, created.stderr
    python = folder / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=folder.parent,
        env={},
    ).stdout.strip()
    (Path(purelib) / "project_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            "--disable-pip-version-check",
            str(wheel),
        ],
        cwd=folder.parent,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(f"fresh virtualenv with the wheel (no dependencies): {time.monotonic() - started:.1f}s")
    return folder


def user_env(venv: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the new environment first on PATH, no project variables."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "HF_HOME", "XDG_CACHE_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def test_the_wheel_holds_every_file_the_code_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in DATA_FILES if name not in names]
    assert not missing, missing
    assert not [n for n in names if n.startswith(("tests/", "specs/", "benchmarks/"))]
    dist_info = f"llmops_gitops-{__version__}.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt")
    assert b"llmops = controller.cli.main:main" in entry_points


def test_the_installed_llmops_runs_a_new_repository_end_to_end(
    venv: Path, tiny_model: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = user_env(venv)
    llmops = str(venv / "bin" / "llmops")

    # Imports come from the new environment, never from the checkout.
    where = run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import controller, runners, sys; "
            "print(controller.__file__); print(runners.__file__); print(sys.path)",
        ],
        cwd=work,
        env=env,
    )
    assert where.returncode == 0, where.stderr
    controller_file, runners_file, path = where.stdout.splitlines()
    assert controller_file.startswith(str(venv)) and runners_file.startswith(str(venv))
    libraries = sysconfig.get_paths()["purelib"]
    inside = [p for p in ast.literal_eval(path) if p and Path(p).is_relative_to(PROJECT_ROOT)]
    assert inside == [libraries], inside  # the third-party libraries only

    shown = run([llmops, "--version"], cwd=work, env=env)
    assert shown.returncode == 0 and shown.stdout.strip() == __version__, shown.stderr

    # llmops init, the model as a local folder outside the new repository: copied in.
    created = run(
        [llmops, "init", "assistant-repo", "--model", str(tiny_model), "--ci", "github"],
        cwd=work,
        env=env,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    root = work / "assistant-repo"
    assert (root / "specs/models/base.yaml").read_text().count('"path": "models/model"') == 1
    assert (root / "models/model/config.json").is_file()
    assert not (root / "llmops.lock").exists()
    workflow = (root / ".github/workflows/apply.yml").read_text()
    assert f'LLMOPS_VERSION: "{__version__}"' in workflow
    assert 'pip install "llmops-gitops==$LLMOPS_VERSION"' in workflow

    # A second init refuses; nothing changed.
    again = run([llmops, "init", "assistant-repo", "--model", str(tiny_model)], cwd=work, env=env)
    assert again.returncode == 2 and "already exist" in again.stderr, again.stderr

    # Seconds of training, and a free port for the local deployment.
    experiment = root / "specs/experiments/finetune.yaml"
    text = experiment.read_text()
    assert "    epochs: 1\n" in text
    experiment.write_text(text.replace("    epochs: 1\n", "    max_steps: 2\n"))
    deployment = root / "specs/deployments/assistant.yaml"
    port = free_port()
    deployment.write_text(deployment.read_text().replace("port: 8000", f"port: {port}"))
    suite = root / "specs/evals/sample.yaml"
    suite.write_text(suite.read_text().replace("max_new_tokens: 48", "max_new_tokens: 8"))
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "llmops init")

    valid = run([llmops, "validate"], cwd=root, env=env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    plan = run([llmops, "plan", "--json"], cwd=root, env=env)
    assert plan.returncode == 3, plan.stdout + plan.stderr
    planned = {a["address"] for a in json.loads(plan.stdout)["actions"]}
    assert {"Experiment/finetune/default", "Deployment/assistant"} <= planned

    apply_env = user_env(venv, LLMOPS_KEY_ASSISTANT=KEY)
    try:
        applied = run([llmops, "apply", "--json"], cwd=root, env=apply_env)
        assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
        results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
        assert results["Model/assistant"]["outputs"]["aliases"] == ["champion"]
        assert results["Deployment/assistant"]["outputs"]["endpoint"] == (
            f"http://127.0.0.1:{port}/v1"
        )
        lock = json.loads((root / "llmops.lock").read_text())
        assert lock["llmops"] == __version__
        card = run([llmops, "models", "show", "assistant@champion", "--card"], cwd=root, env=env)
        assert f"| registered by | llmops {__version__} |" in card.stdout, card.stderr

        # The serving runtime is the installed one.
        (state,) = (root / ".llmops/deployments").glob("*/state.json")
        pid = json.loads(state.read_text())["pid"]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert command[0].decode().startswith(str(venv)) and b"runners.serve" in command

        import openai

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
        answer = client.chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "What does llmops plan do?"}],
            max_tokens=8,
        )
        assert answer.choices[0].message.content is not None

        doctor = run([llmops, "doctor", "--json"], cwd=root, env=apply_env)
        checks = json.loads(doctor.stdout)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert isinstance(checks, list) and checks, checks
    finally:
        for state in (root / ".llmops/deployments").glob("*/state.json"):
            pid = json.loads(state.read_text())["pid"]
            if is_serving_process(pid):
                os.kill(pid, signal.SIGKILL)
