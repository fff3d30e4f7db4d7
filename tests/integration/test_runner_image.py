"""The runner image trains the tiny model in a container, and the result registers; it
evaluates the tiny model in a container, and the results read back as a local evaluation's.

`llmops apply` with the Kubernetes executor submits the training Job to a real API server
(tests/envtest.py). That server has no nodes, so `Kubelet` below does a node's part: it runs
the Job's container, exactly as the Job names it (image, command, env, the state volume at
its mount path, the pod's user and fsGroup), with podman, then writes the Job's terminal
status. The image is the runner image rendered from this checkout (runners/deploy/images.py)
and built with podman as rendered, its pip installs included (tests/podman.py).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from runners.deploy import images
from tests import envtest, podman
from tests.apply_repo import SPECS, build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.integration.test_apply import llmops

NOW = "2026-11-25T12:00:00Z"


@pytest.fixture(scope="session")
def runner_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    podman.engine()
    context = images.render_runner_context(tmp_path_factory.mktemp("runner") / "ctx")
    tag = f"localhost/llmops-test/runner:{context.digest[7:19]}"
    podman.build(context.path, tag)
    return tag


class Kubelet:
    """Runs each new Job of a namespace with podman and reports how it ended."""

    def __init__(self, api: Any, namespace: str, state: Path) -> None:
        self.api, self.namespace, self.state = api, namespace, state
        self.ran: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Kubelet:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def run(self) -> None:
        batch = client.BatchV1Api(self.api)
        seen: set[str] = set()
        while not self.stop.is_set():
            for job in batch.list_namespaced_job(self.namespace).items:
                if job.metadata.name not in seen:
                    seen.add(job.metadata.name)
                    self.start(batch, job)
            self.stop.wait(0.2)

    def start(self, batch: client.BatchV1Api, job: client.V1Job) -> None:
        pod = job.spec.template.spec
        (container,) = pod.containers
        (volume,) = pod.volumes
        (mount,) = container.volume_mounts
        assert volume.persistent_volume_claim.claim_name == "llmops-state"
        security = pod.security_context
        # fsGroup: the volume's files belong to the pod's group, its folders group-writable.
        subprocess.run(["chgrp", "-R", str(security.fs_group), str(self.state)], check=True)
        subprocess.run(
            ["find", str(self.state), "-type", "d", "-exec", "chmod", "g+rwxs", "{}", "+"],
            check=True,
        )
        args = [
            "run",
            "--rm",
            "--user",
            f"{security.run_as_user}:{security.fs_group}",
            *podman.run_args(),
            "-v",
            f"{self.state}:{mount.mount_path}",
        ]
        for env in container.env:
            args += ["-e", f"{env.name}={env.value}"]
        done = podman.podman(*args, container.image, *container.command, check=False)
        self.ran.append(
            {"image": container.image, "command": container.command, "exit": done.returncode}
        )
        if done.returncode != 0:
            self.log = done.stdout[-2000:] + done.stderr[-3000:]
        how = "Complete" if done.returncode == 0 else "Failed"
        first = "SuccessCriteriaMet" if how == "Complete" else "FailureTarget"
        reason = "CompletionsReached" if how == "Complete" else "BackoffLimitExceeded"
        condition = {"status": "True", "reason": reason, "lastTransitionTime": NOW}
        status: dict[str, Any] = {
            "startTime": NOW,
            "conditions": [{"type": first, **condition}, {"type": how, **condition}],
        }
        status |= {"succeeded": 1, "completionTime": NOW} if how == "Complete" else {"failed": 1}
        batch.patch_namespaced_job_status(job.metadata.name, self.namespace, {"status": status})


def test_the_runner_image_trains_in_a_container_and_the_model_registers(
    runner_image: str, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = envtest.cluster()
    api = cluster.client()
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    envtest.ensure_namespace(api, namespace)
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_KUBERNETES_API"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    root = build_repo(tmp_path / "repo", tiny_model)
    experiment = root / "specs/experiments/exp.yaml"
    executor = (
        "    executor: {type: kubernetes, image: "
        f'"{runner_image}", namespace: {namespace}, cpu: "1", memory: 2Gi, timeout_s: 900}}\n'
    )
    experiment.write_text(
        experiment.read_text().replace("    merge: true\n", "    merge: true\n" + executor)
    )
    git(root, "commit", "-qam", "train on kubernetes")

    with Kubelet(api, namespace, root / ".llmops") as kubelet:
        applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + getattr(kubelet, "log", "")
    # The training Job, then the evaluations of the control and the run (they follow the
    # experiment's executor), each in the runner image.
    trained = [r for r in kubelet.ran if r["command"][:3] == ["python", "-m", "runners.train"]]
    evaluated = [r for r in kubelet.ran if r["command"][:3] == ["python", "-m", "runners.evaluate"]]
    assert len(trained) == 1 and len(evaluated) == 2 and len(kubelet.ran) == 3, kubelet.ran
    assert all(r["image"] == runner_image and r["exit"] == 0 for r in kubelet.ran), kubelet.ran
    assert trained[0]["command"][3].startswith("/llmops/runs/")
    assert all(r["command"][3].startswith("/llmops/evals/smoke/") for r in evaluated), evaluated
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    assert results["Model/assistant"]["outputs"]["version"] == "assistant@1"
    gates = results["Evaluation/exp/default"]["outputs"]["gates"]
    assert gates and all(g["passed"] for g in gates.values()), gates
    # The container wrote the run's result and model into the state volume.
    (result_file,) = (root / ".llmops/runs").rglob("result.json")
    assert json.loads(result_file.read_text())["status"] == "succeeded"
    jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
    assert [j.status.succeeded for j in jobs] == [1, 1, 1]


def test_the_runner_image_evaluates_like_a_local_evaluation(
    runner_image: str, tmp_path: Path, tiny_model: Path
) -> None:
    """`python -m runners.evaluate JOB` in the runner image, offline, on a mounted state
    folder (as a Job's volume), as the image's user: its results folder reads back with the
    same metrics and per-sample rows as the evaluation run here."""
    from controller.api.evalsuite import EvalSuiteSpec
    from runners.evaluate.job import EvalJob
    from runners.evaluate.run import evaluate, load_samples

    state = tmp_path / "state"
    shutil.copytree(tiny_model, state / "models/tiny/1")
    (state / "data").mkdir()
    rows = (PROJECT_ROOT / "data/evals/support-faq-eval.jsonl").read_text().splitlines()[:6]
    (state / "data/eval.jsonl").write_text("\n".join(rows) + "\n")
    suite = EvalSuiteSpec(**yaml.safe_load(SPECS["specs/evals/smoke.yaml"])["spec"]).model_dump()
    mount = "/llmops"

    def job(root: str, out: str) -> EvalJob:
        return EvalJob(
            suite_name="smoke",
            suite=suite,
            task_data={task["name"]: f"{root}/data/eval.jsonl" for task in suite["tasks"]},
            model=f"{root}/models/tiny/1",
            output=f"{root}/evaluations/smoke/{out}",
            batch_size=4,
        )

    job(mount, "container").save(state / "job.json")
    # The image's user (uid 10001) owns nothing here: the folder is opened to it, as the
    # pod's fsGroup opens a volume.
    subprocess.run(["chmod", "-R", "a+rwX", str(state)], check=True)
    ran = podman.podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{state}:{mount}",
        runner_image,
        "python",
        "-m",
        "runners.evaluate",
        f"{mount}/job.json",
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-3000:]
    inside = state / "evaluations/smoke/container"
    assert json.loads((inside / "result.json").read_text())["status"] == "succeeded"

    here = evaluate(job(str(state), "local").inputs(report=lambda _: None))
    there = json.loads((inside / "results.json").read_text())
    assert there["suite"] == "smoke" and set(there["metrics"]) == set(here["metrics"])
    assert {"answers/rouge_l", "ppl/perplexity"} <= set(there["metrics"])
    for metric, value in here["metrics"].items():
        assert math.isclose(there["metrics"][metric], value, rel_tol=1e-4), metric
    ours, theirs = load_samples(state / "evaluations/smoke/local"), load_samples(inside)
    assert theirs.keys() == ours.keys()
    for metric in ours:
        assert theirs[metric].keys() == ours[metric].keys()
    # A job it cannot read is a one-line error and exit 2, no traceback.
    bad = podman.podman(
        "run",
        "--rm",
        "--network",
        "none",
        runner_image,
        "python",
        "-m",
        "runners.evaluate",
        "/nowhere/job.json",
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "cannot read the evaluation job /nowhere/job.json" in bad.stderr
