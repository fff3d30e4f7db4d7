"""Team scale: two runners share an S3 artifact store (moto's server) and a PostgreSQL registry;
the second, with an empty state folder, plans no work, fetches the champion once and serves it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops

KEY = "sk-team-0123456789"
BUCKET = "llmops-team"


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with one bucket; the AWS variables point at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "team",
        "AWS_SECRET_ACCESS_KEY": "team-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def team(
    tmp_path: Path,
    tiny_model: Path,
    s3_server: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, Path, int]]:
    """Repository A with a local Deployment; the store and a fresh registry schema set."""
    from sqlalchemy import text

    from controller.state.registry.db import make_engine

    schema = "team" + uuid.uuid4().hex[:8]
    with make_engine(postgres_url).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    monkeypatch.setenv("LLMOPS_REGISTRY_URL", f"{postgres_url}?options=-csearch_path%3D{schema}")
    monkeypatch.setenv("LLMOPS_STORE", f"s3://{BUCKET}/main")
    monkeypatch.setenv(API_KEY_ENV, KEY)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    monkeypatch.delenv("LLMOPS_FAULT_KILL", raising=False)
    # Both runners digest one copy of the runners' code, as two checkouts of one commit do
    # (this working tree may change while the test runs).
    shutil.copytree(PROJECT_ROOT / "runners", tmp_path / "code/runners")
    monkeypatch.setenv("LLMOPS_RUNNERS_SOURCE", str(tmp_path / "code"))
    port = free_port()
    root = build_repo(tmp_path / "a", tiny_model, deploy_port=port)
    yield root, tmp_path, port
    for state in tmp_path.glob("state-*/deployments/*/state.json"):
        stop(state)


def stop(state: Path) -> None:
    pid = json.loads(state.read_text())["pid"]
    if is_serving_process(pid):
        os.kill(pid, signal.SIGKILL)


def runner(state: Path) -> dict[str, str]:
    return {"LLMOPS_STATE_DIR": str(state)}


def fetched(state: Path) -> list[str]:
    """The blobs the runner fetched from the store, in order (its state folder's log)."""
    log = state / "blobs/fetched.jsonl"
    if not log.exists():
        return []
    return [json.loads(line)["sha256"] for line in log.read_text().splitlines()]


def test_second_runner_reuses_everything_from_the_store(team: tuple[Path, Path, int]) -> None:
    root_a, tmp, port = team
    state_a, state_b = tmp / "state-a", tmp / "state-b"

    applied = llmops(root_a, "apply", "--json", env=runner(state_a))
    assert applied.returncode == 0, applied.stderr
    assert fetched(state_a) == []  # A wrote everything itself
    # Runner A goes away (its server with it); main holds the lock file it committed.
    for state in state_a.glob("deployments/*/state.json"):
        stop(state)
    git(root_a, "add", "llmops.lock")
    git(root_a, "commit", "-qm", "llmops: update lock")
    root_b = tmp / "b"
    subprocess.run(["git", "clone", "-q", str(root_a), str(root_b)], check=True)

    plan = llmops(root_b, "plan", "--json", env=runner(state_b))
    assert plan.returncode == 3, plan.stderr  # 3: changes pending (the deployment)
    actions = {a["address"]: a for a in json.loads(plan.stdout)["actions"]}
    assert {"Experiment/exp/default", "Evaluation/exp/default", "Dataset/faq"} <= set(actions)
    pending = {a: act["action"] for a, act in actions.items() if act["action"] != "noop"}
    # Only the server is missing: it ran on runner A's machine, not on this one.
    assert pending == {"Deployment/assistant": "deploy"}, pending
    assert not (state_b / "blobs/sha256").exists()

    started = time.monotonic()
    first = llmops(root_b, "apply", "--json", env=runner(state_b))
    assert first.returncode == 0, first.stderr
    results = {r["address"]: r for r in json.loads(first.stdout)["results"]}
    done = {a for a, r in results.items() if r.get("action", "noop") != "noop"}
    assert done == {"Deployment/assistant"}, results
    assert results["Deployment/assistant"]["outputs"]["version"] == "assistant@1"
    assert time.monotonic() - started < 300

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    answer = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "How do I reset my password?"}]
    )
    assert answer.choices[0].message.content

    # The champion's files came from the store, each once, and are all that came.
    from controller.state.paths import StatePaths
    from controller.state.registry.store import Registry

    champion = Registry.open(StatePaths(state_b)).find("assistant@champion")
    assert champion is not None
    wanted = {f.sha256 for f in champion.files}
    got = fetched(state_b)
    assert len(got) == len(set(got)), "a blob was fetched twice"
    assert wanted <= set(got), wanted - set(got)
    on_disk = {p.name for p in (state_b / "blobs/sha256").glob("*/*")}
    assert on_disk == set(got)

    again = llmops(root_b, "apply", "--json", env=runner(state_b))
    assert again.returncode == 0, again.stderr
    assert all(r.get("action", "noop") == "noop" for r in json.loads(again.stdout)["results"])
    assert fetched(state_b) == got  # nothing fetched the second time
