"""Dashboard pages over a registry of 1,000 model versions and 1,000 runs, against named
baselines measured in the same run.

The registry is filled directly (one model with 1,000 versions, each a run of experiment
`exp` with tags, lineage, training metrics and a training log blob) plus an arena and a lock
file, then every page is requested in-process (FastAPI's TestClient, no network) after one
warm-up request (its time is printed as "first": imports, the first query, a plan the
overview then reuses while nothing changes); the median of 5 is printed per page.
Baselines: a raw SQL query of the same
versions (models joined to versions, with tags and metrics) and `llmops models list --json`
as a user runs it (a fresh interpreter, so mostly start-up and imports).

    python benchmarks/ui_speed.py [--versions 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from controller.state.lockfile import LockEntry, LockFile, write_lock
from controller.state.paths import StatePaths
from controller.state.registry.schema import (
    ArenaAnswerRow,
    ArenaBattleRow,
    ArenaVoteRow,
    BlobRow,
    FileRow,
    LineageRow,
    MetricRow,
    ModelRow,
    TagRow,
    VersionRow,
)
from controller.state.registry.store import Registry

PAGES = [
    "/",
    "/models",
    "/models/assistant",
    "/models/assistant/{last}",
    "/datasets",
    "/runs",
    "/runs/exp",
    "/evaluations",
    "/arena/duel",
    "/arena/duel/vote",
    "/scans",
    "/deployments",
    "/history",
]


def fill(root: Path, versions: int) -> None:
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/models/assistant.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Model\nmetadata: {name: assistant}\n"
        "spec: {source: {type: local, path: models/assistant}}\n"
    )
    (root / "models/assistant").mkdir(parents=True)
    (root / "models/assistant/config.json").write_text('{"model_type": "llama"}\n')
    paths = StatePaths.for_repo(root)
    paths.root.mkdir(parents=True)
    registry = Registry.open(paths)
    logs = []
    for i in range(10):
        lines = [json.dumps({"step": 0, "eval_loss": 3.0 + i / 10})]
        for step in range(1, 201):
            record = {
                "step": step,
                "loss": 3.0 / (1 + step / 50) + i / 100,
                "lr": 1e-3 * (1 - step / 200),
                "grad_norm": 0.5,
                "tokens": 512,
                "tokens_per_s": 2000.0,
            }
            if step % 20 == 0:
                record["eval_loss"] = record["loss"] + 0.1
            lines.append(json.dumps(record))
        logs.append(registry.blobs.put_bytes(("\n".join(lines) + "\n").encode(), "log.jsonl"))
    job = registry.blobs.put_bytes(
        json.dumps({"training": {"learning_rate": 1e-3}}).encode(), "job.json"
    )
    with registry.session() as session:
        for blob in [*logs, job]:
            session.add(BlobRow(sha256=blob.sha256, size=blob.size))
    with registry.session() as session:
        model = ModelRow(name="assistant", description="bench")
        session.add(model)
        session.flush()
        for number in range(1, versions + 1):
            version = VersionRow(
                model_id=model.id,
                number=number,
                spec_digest=f"sha256:{number:064x}",
                source={"type": "experiment", "experiment": "exp", "run": f"run-{number}"},
                parameters=1000,
                size_bytes=10,
                extra={},
                card=f"# assistant@{number}\n\nA run.\n",
            )
            session.add(version)
            session.flush()
            blob = logs[number % 10]
            session.add_all(
                [
                    TagRow(version_id=version.id, key="experiment", value="exp"),
                    TagRow(version_id=version.id, key="run", value=f"run-{number}"),
                    TagRow(version_id=version.id, key="kind", value="adapter"),
                    LineageRow(version_id=version.id, experiment_run=f"exp/run-{number}"),
                    FileRow(
                        version_id=version.id,
                        path="training/log.jsonl",
                        sha256=blob.sha256,
                        size=blob.size,
                    ),
                    FileRow(
                        version_id=version.id,
                        path="training/job.json",
                        sha256=job.sha256,
                        size=job.size,
                    ),
                    MetricRow(
                        version_id=version.id, suite="training", name="train/final_loss", value=1.0
                    ),
                    MetricRow(
                        version_id=version.id, suite="smoke", name="answers/rouge_l", value=0.2
                    ),
                ]
            )
        for key, blob in (("a", logs[0]), ("b", logs[1])):
            session.add(ArenaAnswerRow(key=key, model=key, sha256=blob.sha256))
        session.flush()
        for battle in range(200):
            row = ArenaBattleRow(
                arena="duel",
                key=f"k{battle}",
                prompt="p",
                model_a="assistant@1",
                model_b="assistant@2",
                answer_a="a",
                answer_b="b",
                extra={},
            )
            session.add(row)
            session.flush()
            session.add(
                ArenaVoteRow(
                    battle_id=row.id,
                    voter_kind="judge",
                    voter_id="j",
                    winner="model_a" if battle % 3 else "model_b",
                    position="",
                    tstamp=0.0,
                    detail={},
                )
            )
    lock = LockFile()
    lock.resources["Experiment/exp/run-1"] = LockEntry.model_validate(
        {
            "kind": "Experiment",
            "digest": "sha256:" + "1" * 64,
            "outputs": {"version": "assistant@1"},
        }
    )
    lock.resources[f"Experiment/exp/run-{versions}"] = LockEntry.model_validate(
        {
            "kind": "Experiment",
            "digest": "sha256:" + "2" * 64,
            "outputs": {"version": f"assistant@{versions}"},
        }
    )
    write_lock(root / "llmops.lock", lock)


def timed(call: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from controller.ui.server import create_app

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        began = time.perf_counter()
        fill(root, args.versions)
        print(
            f"registry: {args.versions} versions, {args.versions} runs, 200 battles "
            f"(filled in {time.perf_counter() - began:.1f} s)"
        )
        registry = Registry.open(StatePaths.for_repo(root))

        def raw_sql() -> None:
            with registry.sessions() as session:
                session.execute(
                    text(
                        "SELECT m.name, v.number, v.created_at, v.parameters, t.key, t.value, "
                        "x.name, x.value FROM model_versions v "
                        "JOIN models m ON m.id = v.model_id "
                        "LEFT JOIN tags t ON t.version_id = v.id "
                        "LEFT JOIN metrics x ON x.version_id = v.id"
                    )
                ).all()

        sql = timed(raw_sql, args.repeat)
        cli = timed(
            lambda: subprocess.run(
                [sys.executable, "-m", "controller.cli.main", "models", "list", "--json"],
                cwd=root,
                check=True,
                capture_output=True,
            ),
            min(args.repeat, 3),
        )
        print(f"baseline raw SQL (versions with tags and metrics): {sql * 1000:7.1f} ms")
        print(f"baseline `llmops models list --json` (fresh process): {cli * 1000:7.1f} ms")
        client = TestClient(create_app(root))
        print(f"{'page':28} {'first ms':>9} {'ms':>8} {'x SQL':>7} {'x CLI':>7}")
        worst = 0.0
        for template in PAGES:
            path = template.format(last=args.versions)
            began = time.perf_counter()
            first = client.get(path)
            cold = time.perf_counter() - began
            assert first.status_code == 200, (path, first.status_code, first.text[:300])
            seconds = timed(lambda p=path: client.get(p), args.repeat)
            worst = max(worst, seconds)
            print(
                f"{path:28} {cold * 1000:9.1f} {seconds * 1000:8.1f} {seconds / sql:7.1f} "
                f"{seconds / cli:7.2f}"
            )
        print(f"slowest page: {worst * 1000:.1f} ms (target: under 300 ms)")


if __name__ == "__main__":
    main()
