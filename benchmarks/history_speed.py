"""Benchmark: `llmops history` on a repository with many merged pull requests and a large lock.

Builds N pull requests (a spec commit and a lock commit each, merged with a merge commit)
over a lock of R resources, then times the history of one deployment, `--at` an old commit,
and `git log -p` over the same paths (what a person would otherwise read).
Usage: python benchmarks/history_speed.py [N] [R]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controller.history.git_reader import history, snapshot
from controller.state.lockfile import LOCK_FILE, LockFile, write_lock

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, env=ENV, capture_output=True, text=True, check=True
    )
    return done.stdout


def deployment(name: str, version: int) -> str:
    return (
        f"apiVersion: llmops/v1\nkind: Deployment\nmetadata: {{name: {name}}}\n"
        f"spec: {{model: assistant@{version}, target: local, runtime: transformers}}\n"
    )


def build(root: Path, pulls: int, size: int) -> None:
    git(root, "init", "-q", "-b", "main")
    folder = root / "specs/deployments"
    folder.mkdir(parents=True)
    resources = {
        f"Experiment/exp{i}/default": {
            "kind": "Experiment",
            "digest": f"sha256:{i:064d}",
            "outputs": {"version": f"m{i}@1", "metrics": {"eval_loss": 3.0}},
        }
        for i in range(size)
    }
    for index in range(pulls):
        name = f"web{index % 10}"  # ten deployments, each changed every tenth PR
        if index:
            git(root, "checkout", "-q", "-b", f"pr{index}")
        (folder / f"{name}.yaml").write_text(deployment(name, index))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", f"Serve assistant@{index} on {name}")
        resources[f"Deployment/{name}"] = {
            "kind": "Deployment",
            "digest": f"sha256:{index:064d}",
            "outputs": {"version": f"assistant@{index}"},
        }
        resources[f"Experiment/exp{index % size}/default"]["outputs"]["metrics"] = {
            "eval_loss": 3.0 - index / 1000
        }
        write_lock(root / LOCK_FILE, LockFile.model_validate({"resources": resources}))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "Apply")
        if index:
            git(root, "checkout", "-q", "main")
            git(
                root,
                "merge",
                "-q",
                "--no-ff",
                f"pr{index}",
                "-m",
                f"Merge pull request #{index} from t/pr{index}",
            )


def main() -> None:
    pulls = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build(root, pulls, size)
        commits = git(root, "rev-list", "--count", "HEAD").strip()
        print(
            f"built {commits} commits, lock of {size + 10} resources, in "
            f"{time.perf_counter() - start:.1f} s"
        )
        start = time.perf_counter()
        _, changes, _ = history(root, "Deployment/web3")
        took = time.perf_counter() - start
        print(f"history Deployment/web3: {len(changes)} changes in {took:.2f} s")
        start = time.perf_counter()
        found, _ = snapshot(root, "Deployment/web3", "HEAD~50")
        print(
            f"--at HEAD~50: serves {found.served.version if found.served else '-'} "
            f"in {time.perf_counter() - start:.2f} s"
        )
        start = time.perf_counter()
        git(root, "log", "-p", "--", LOCK_FILE, "specs")
        print(f"git log -p -- {LOCK_FILE} specs: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
