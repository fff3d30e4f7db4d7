"""An Evaluation as a Kubernetes Job over the S3 store, no shared volume: an experiment whose
training executor is kubernetes evaluates its control (the tiny base model) in a Job that
the controller creates through a real API server (tests/envtest.py); a test kubelet runs the
Job's container command as a local process with only the pod's env and an empty state folder
(test_store_pod.py's helpers), marks the Job Complete, and the controller records the metrics
the pod pushed. They equal the same suite run in process; a failed Job names its reason."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.engine import Applier, apply_evaluation
from controller.apply.evaluate import Evaluator
from controller.apply.kubernetes_job import STORE_SECRET
from controller.load.desired import load_desired
from controller.plan.address import Address
from controller.workspace import open_registry
from runners.evaluate.run import EvalError
from tests.conftest import PROJECT_ROOT
from tests.integration.test_store_pod import (  # noqa: F401  (fixtures)
    endpoint,
    job_kubelet,
    s3_env,
    store_namespace,
    store_secret,
    use_cluster,
)
from tests.integration.test_train_controller import repo  # noqa: F401  (fixture)

SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: suite}
spec:
  tasks:
    - name: answers
      type: generate_until
      data: {type: file, path: data/eval.jsonl}
      metrics: [exact_match, token_f1]
      generation: {max_new_tokens: 4}
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question} {answer}"
      metrics: [perplexity]
    - name: choice
      type: multiple_choice
      data: {type: file, path: data/choice.jsonl}
      target: label
      metrics: [accuracy]
"""
CONTROL = "Evaluation/exp/control"  # the tiny base model: no training needed


def with_suite(root: Path, executor: str) -> None:
    """The experiment evaluated on a small suite, trained (and so evaluated) where `executor`
    says."""
    (root / "specs/evals").mkdir(parents=True, exist_ok=True)
    (root / "specs/evals/suite.yaml").write_text(SUITE)
    for name, source, rows in (
        ("eval", "support-faq-eval", 4),
        ("choice", "support-faq-choice", 4),
    ):
        lines = (PROJECT_ROOT / f"data/evals/{source}.jsonl").read_text().splitlines()[:rows]
        (root / f"data/{name}.jsonl").write_text("\n".join(lines) + "\n")
    spec = root / "specs/experiments/exp.yaml"
    text = spec.read_text().replace(
        "  register_as: helper", "  eval_suite: suite\n  register_as: helper"
    )
    spec.write_text(text.replace("    lora: {r: 4", f"    executor: {executor}\n    lora: {{r: 4"))


def applier(root: Path) -> Applier:
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    return Applier(loaded, open_registry(root), Console(quiet=True), root / "llmops.lock")


def test_an_evaluation_job_over_the_store_records_what_the_process_would(
    repo: Path,  # noqa: F811
    s3_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client

    api, ns = store_namespace(s3_env, monkeypatch)
    with_suite(repo, f"{{type: kubernetes, namespace: {ns}, timeout_s: 300}}")
    # The same repository evaluated in process, with no store: the reference numbers.
    local_repo = tmp_path / "local"
    shutil.copytree(repo, local_repo, symlinks=True)
    with monkeypatch.context() as local:
        local.delenv("LLMOPS_STORE")
        quiet = Console(quiet=True)
        in_process = Evaluator(load_desired(local_repo), open_registry(local_repo), quiet).run(
            "suite", "tiny"
        )

    pod_state = tmp_path / "pod-scratch"  # the pod's emptyDir: nothing of the controller's
    pod_state.mkdir()
    ran: dict[str, Any] = {}
    node = threading.Thread(target=job_kubelet, args=(api, ns, pod_state, tmp_path, ran, True))
    node.start()
    steps = applier(repo)
    try:
        outputs = apply_evaluation(steps, Address.parse(CONTROL))
    except EvalError as err:
        node.join(timeout=300)
        raise AssertionError(f"{err}\npod log:\n{ran.get('log')}") from err
    node.join(timeout=300)
    assert ran.get("rc") == 0, ran.get("log")

    # The Job as the API server holds it: the evaluate runner under the store's entry, the
    # Secret's store, an emptyDir and no claim; marked Complete.
    job = client.BatchV1Api(api).read_namespaced_job(ran["job"].metadata.name, ns)
    pod = job.spec.template.spec
    assert [v.empty_dir is not None for v in pod.volumes] == [True]
    assert all(v.persistent_volume_claim is None for v in pod.volumes)
    (container,) = pod.containers
    assert container.command[:3] == ["python", "-m", "controller.state.artifacts.pod"]
    assert container.command[-4:] == ["python", "-m", "runners.evaluate", "{job}"]
    refs = {e.name: e.value_from.secret_key_ref for e in container.env if e.value_from}
    assert refs["LLMOPS_STORE"].name == STORE_SECRET and not refs["LLMOPS_STORE"].optional
    assert job.metadata.labels["app.kubernetes.io/component"] == "evaluate"
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)
    # The pod fetched the model from the store into its scratch folder.
    assert any(pod_state.rglob("config.json"))

    # Recorded as an in-process evaluation would be: the same metrics (to 1e-6), in the
    # registry's rows and the lock's outputs, from the same result files.
    version = open_registry(repo).find("tiny@1")
    assert version is not None
    recorded = {m.name: m.value for m in version.metrics if m.suite == "suite"}
    expected = in_process.summary["metrics"]
    assert set(recorded) == set(expected) and len(expected) == 4
    assert recorded == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert outputs.subject == "tiny@1" and outputs.suite == "suite"
    assert outputs.metrics == pytest.approx(
        {k: float(f"{v:.6g}") for k, v in expected.items()}, rel=1e-6, abs=1e-6
    )
    folder = Evaluator(load_desired(repo), open_registry(repo), Console(quiet=True)).results_dir(
        "suite", version
    )

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    # The runner's own status file comes back too (how the Job ended); nothing else differs.
    assert files(folder) - {"result.json", ".llmops-folder.json"} == files(in_process.folder)
    # A second evaluation is read back from the folder: no second Job.
    again = Evaluator(load_desired(repo), open_registry(repo), Console(quiet=True))
    assert again.run("suite", "tiny", executor={"type": "kubernetes"}).status == "cached"


def test_a_failed_evaluation_job_is_reported_with_its_reason(
    repo: Path,  # noqa: F811
    s3_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api, ns = store_namespace(s3_env, monkeypatch)
    with_suite(repo, f"{{type: kubernetes, namespace: {ns}, timeout_s: 120}}")
    ran: dict[str, Any] = {}
    node = threading.Thread(target=job_kubelet, args=(api, ns, tmp_path, tmp_path, ran, False))
    node.start()
    with pytest.raises(EvalError) as failed:
        apply_evaluation(applier(repo), Address.parse(CONTROL))
    node.join(timeout=300)
    message = str(failed.value)
    name = ran["job"].metadata.name
    assert f"Job {ns}/{name} failed: BackoffLimitExceeded" in message
    assert "suite suite on tiny@1" in message and f"kubectl -n {ns} logs job/{name}" in message
    version = open_registry(repo).find("tiny@1")
    assert version is not None and not [m for m in version.metrics if m.suite == "suite"]


@pytest.mark.hardening
def test_without_a_store_the_evaluation_job_reads_and_writes_the_claim(
    repo: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The volume-claim form: the claim is the controller's state folder itself (mounted
    where it lies, so the job's paths hold here), the pod writes the results in place."""
    from kubernetes import client

    monkeypatch.delenv("LLMOPS_STORE", raising=False)
    api, ns = store_namespace(None, monkeypatch)
    state = repo / ".llmops"
    executor = f"{{type: kubernetes, namespace: {ns}, timeout_s: 300, state_mount_path: {state}}}"
    with_suite(repo, executor)
    ran: dict[str, Any] = {}
    node = threading.Thread(target=job_kubelet, args=(api, ns, state, tmp_path, ran, True))
    node.start()
    try:
        outputs = apply_evaluation(applier(repo), Address.parse(CONTROL))
    except EvalError as err:
        node.join(timeout=300)
        raise AssertionError(f"{err}\npod log:\n{ran.get('log')}") from err
    node.join(timeout=300)
    assert ran.get("rc") == 0, ran.get("log")
    job = client.BatchV1Api(api).read_namespaced_job(ran["job"].metadata.name, ns)
    (volume,) = job.spec.template.spec.volumes
    assert volume.persistent_volume_claim.claim_name == "llmops-state"
    assert not [e for e in job.spec.template.spec.containers[0].env if e.value_from]
    assert len(outputs.metrics) == 4
    version = open_registry(repo).find("tiny@1")
    assert version is not None
    assert {m.name for m in version.metrics if m.suite == "suite"} == set(outputs.metrics)
