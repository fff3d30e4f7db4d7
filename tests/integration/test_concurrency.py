"""Concurrency: two `llmops pipeline run`s at once (one fails clearly, the other finishes),
apply while `llmops ui` serves (both work) and apply while `llmops serve` holds the
deployment's port (the deployment fails clearly, the rest applies, the server keeps
answering). Two applies at once are in test_apply_crash.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo
from tests.integration.test_apply import llmops
from tests.integration.test_pipeline import (  # noqa: F401  (loop is a fixture)
    chat,
    commit_lock,
    loop,
)

KEY = "sk-test-0123456789"


def one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr and "bug" not in stderr.lower(), stderr


@pytest.mark.hardening
def test_two_pipeline_runs_at_once_one_fails_clearly_the_other_finishes(
    loop: dict,  # noqa: F811
) -> None:
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    assert llmops(root, "apply").returncode == 0
    commit_lock(root)
    chat(port, 60)
    first = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", "pipeline", "run", "retrain", "--json"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **loop["env"]},
    )
    holder = root / ".llmops/pipelines/retrain/apply.lock.json"
    deadline = time.monotonic() + 300
    while not holder.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holder.exists(), "the first run never took the pipeline's lock"

    second = llmops(root, "pipeline", "run", "retrain", env=loop["env"])
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "succeeded"
    assert second.returncode == 4, second.stdout + second.stderr
    said = " ".join(second.stderr.split())
    assert f"another pipeline retrain is running (pid {first.pid} on" in said, said
    one_line_error(second.stderr)
    # The one that ran is the only one that trained and proposed anything.
    assert len(fake.pull_requests) == 1
    assert len(list((root / ".llmops/runs/exp/default").iterdir())) == 2  # base + retrain
    status = json.loads(llmops(root, "pipeline", "status", "retrain", "--json").stdout)
    assert [r["status"] for r in status["runs"]] == ["succeeded"], status
    print("\nconcurrency: 2 pipeline runs at once: 1 ran, 1 refused (exit 4, named the holder)")


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    monkeypatch.setenv("LLMOPS_PORT_CLAIMS", str(tmp_path / "claims"))
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=free_port())
    yield root
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def background(root: Path, *args: str, ready: str) -> Iterator[subprocess.Popen]:
    """llmops ARGS in the background until `ready` (a URL) answers; stopped afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", "controller.cli.main", *args],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(ready, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                said = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"llmops {args[0]} did not start: {said}")
            time.sleep(0.2)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.hardening
def test_apply_while_the_dashboard_serves_both_work(repo: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pages = ["/", "/models", "/runs", "/evaluations", "/datasets", "/deployments"]
    answers: list[int] = []
    stop = threading.Event()

    def browse() -> None:  # a reader of the registry and lock file while apply writes them
        while not stop.is_set():
            for page in pages:
                answers.append(httpx.get(url + page, timeout=30).status_code)

    with background(repo, "ui", "--port", str(port), ready=url + "/static/app.css"):
        reader = threading.Thread(target=browse)
        reader.start()
        try:
            applied = llmops(repo, "apply", "--skip-deploy", "--json")
        finally:
            stop.set()
            reader.join(60)
        assert applied.returncode == 0, applied.stderr[-3000:]
        statuses = {r["status"] for r in json.loads(applied.stdout)["results"]}
        assert statuses == {"applied", "skipped"}  # the deployment: --skip-deploy
        assert "assistant@1" in httpx.get(url + "/models", timeout=30).text
    assert answers and set(answers) == {200}, sorted(set(answers))
    assert llmops(repo, "models", "verify").returncode == 0
    print(f"\nconcurrency: apply while the dashboard served {len(answers)} pages: all 200")


@pytest.mark.hardening
def test_apply_while_llmops_serve_holds_the_port_fails_that_deployment_clearly(
    repo: Path,
) -> None:
    assert llmops(repo, "apply", "--skip-deploy").returncode == 0
    spec = (repo / "specs/deployments/assistant.yaml").read_text()
    port = int(spec.split("port: ")[1].split()[0])
    url = f"http://127.0.0.1:{port}"
    with background(repo, "serve", "assistant", ready=url + "/v2/health/ready") as foreground:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        applied = llmops(repo, "apply", "--json")
        # The foreground server is someone's: apply never joins or stops it.
        answer = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hello?"}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
        assert foreground.poll() is None
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    deployment = results["Deployment/assistant"]
    assert applied.returncode == 1 and deployment["status"] == "failed", applied.stderr[-3000:]
    assert f"port 127.0.0.1:{port} is already in use" in deployment["message"], deployment
    one_line_error(applied.stderr)
    assert all(r["status"] != "failed" for a, r in results.items() if a != "Deployment/assistant")
    # Once it stops, the next apply deploys.
    again = llmops(repo, "apply", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    outputs = {r["address"]: r for r in json.loads(again.stdout)["results"]}
    assert outputs["Deployment/assistant"]["outputs"]["version"] == "assistant@1"
    print(f"\nconcurrency: apply while llmops serve held port {port}: {deployment['message']}")
