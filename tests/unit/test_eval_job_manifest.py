"""An Evaluation as a Kubernetes Job: the rendered manifest (over the state claim, or over the
store's Secret with no claim), the job file as the pod sees it, and the resolver carrying an
experiment's Kubernetes executor to its evaluations (and nothing otherwise)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from controller.api.evaluation import EvaluationSpec
from controller.apply.evaluate_job import (
    INPUT_FIELDS,
    PATH_FIELDS,
    bases,
    in_volume,
    job_folder,
    job_key,
    write_job,
)
from controller.apply.kubernetes_job import (
    POD_ENTRY,
    STORE_KEYS,
    STORE_SECRET,
    manifest,
    render_eval_job,
    render_job,
)
from controller.apply.store_job import stage
from controller.load.desired import load_desired
from controller.state.artifacts.pod import prepare
from controller.state.artifacts.url import open_store
from runners.evaluate.job import EvalJob
from runners.evaluate.run import EvalError

EXECUTOR = {
    "type": "kubernetes",
    "image": "registry.example/llmops-runner:1",
    "namespace": "ml",
    "cpu": "4",
    "memory": "16Gi",
    "gpu": 1,
    "state_volume_claim": "team-state",
    "state_mount_path": "/state",
    "backoff_limit": 1,
}
KEY = "cd" * 32
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def job_file(tmp_path: Path) -> tuple[Path, Path]:
    state = tmp_path / ".llmops"
    path = state / "evals/suite/helper@3/0123456789abcdef-89abcdef.job/job.json"
    path.parent.mkdir(parents=True)
    return state, path


def test_over_the_claim_the_pod_runs_the_evaluate_runner_on_the_mounted_job(
    tmp_path: Path,
) -> None:
    state, path = job_file(tmp_path)
    job = manifest(render_eval_job(path, "suite", "helper@3", KEY, EXECUTOR, state))
    name = job["metadata"]["name"]
    assert DNS_1123.match(name) and len(name) <= 63
    assert name.startswith("llmops-eval-suite-helper-3-") and name.endswith(KEY[:10])
    assert job["metadata"]["namespace"] == "ml" and job["spec"]["backoffLimit"] == 1
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "evaluate"
    assert (labels["llmops.dev/suite"], labels["llmops.dev/model"]) == ("suite", "helper")
    assert labels["llmops.dev/version"] == "3"
    assert all(LABEL_VALUE.match(v) for v in labels.values()), labels
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "evaluate"
    assert container["command"] == [
        "python",
        "-m",
        "runners.evaluate",
        "/state/evals/suite/helper@3/0123456789abcdef-89abcdef.job/job.json",
    ]
    assert container["image"] == "registry.example/llmops-runner:1"
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert {"name": "LLMOPS_STATE_DIR", "value": "/state"} in container["env"]
    assert not any("valueFrom" in e for e in container["env"])
    assert pod["volumes"] == [
        {"name": "state", "persistentVolumeClaim": {"claimName": "team-state"}}
    ]
    assert container["volumeMounts"] == [{"mountPath": "/state", "name": "state"}]


def test_over_the_store_the_pod_mounts_no_claim_and_reads_the_secret(tmp_path: Path) -> None:
    state, path = job_file(tmp_path)
    job = manifest(render_eval_job(path, "suite", "helper@3", KEY, EXECUTOR, state, STORE_SECRET))
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "state", "emptyDir": {}}]
    (container,) = pod["containers"]
    key = "evals/suite/helper@3/0123456789abcdef-89abcdef.job/job.json"
    assert container["command"] == [
        *POD_ENTRY,
        key,
        "--",
        "python",
        "-m",
        "runners.evaluate",
        "{job}",
    ]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["LLMOPS_STORE"] == {"name": STORE_SECRET, "key": "LLMOPS_STORE", "optional": False}
    assert {name for name, ref in refs.items() if ref["optional"]} == set(STORE_KEYS)
    assert {"name": "LLMOPS_STATE_DIR", "value": "/state"} in container["env"]


def test_names_stay_valid_and_apart_for_long_names(tmp_path: Path) -> None:
    state, path = job_file(tmp_path)
    long_suite = "a-suite-with-a-name-much-longer-than-any-kubernetes-name-allows-" * 2
    names = {
        manifest(render_eval_job(path, long_suite, "Model_X@12", key, EXECUTOR, state))["metadata"][
            "name"
        ]
        for key in ("11" * 32, "22" * 32)
    }
    assert len(names) == 2
    for name in names:
        assert DNS_1123.match(name) and len(name) <= 63, name
    labels = manifest(render_eval_job(path, long_suite, "Model_X@12", KEY, EXECUTOR, state))[
        "metadata"
    ]["labels"]
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values()), labels


def test_a_training_job_keeps_its_form(tmp_path: Path) -> None:
    state = tmp_path / ".llmops"
    path = state / "runs/exp/default/abcd/job.json"
    path.parent.mkdir(parents=True)
    job = manifest(render_job(path, "exp/default", "sha256:" + KEY, EXECUTOR, state))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "train" and container["command"][:3] == [
        "python",
        "-m",
        "runners.train",
    ]
    assert job["metadata"]["name"].startswith("llmops-train-exp-default-")
    assert job["metadata"]["labels"]["llmops.dev/experiment"] == "exp"


def test_the_job_file_names_the_mount_and_copies_repository_data(tmp_path: Path) -> None:
    state = tmp_path / ".llmops"
    results = state / "evals/suite/helper@3/0123456789abcdef-89abcdef"
    model = state / "models/helper/3"
    model.mkdir(parents=True)
    repo_data = tmp_path / "repo/data/eval.jsonl"  # in the repository, not the state folder
    repo_data.parent.mkdir(parents=True)
    repo_data.write_text('{"question": "q", "answer": "a"}\n')
    job = write_job("suite", {"tasks": []}, {"answers": repo_data}, model, results, None, {})
    copied = Path(job.task_data["answers"])
    assert copied.parent == results.with_name(results.name + ".job") / "data"
    assert copied.read_text() == repo_data.read_text()
    seen = in_volume(job, state, "/state")
    assert seen.task_data == {
        "answers": "/state/evals/suite/helper@3/0123456789abcdef-89abcdef.job/data/answers.jsonl"
    }
    assert seen.model == "/state/models/helper/3"
    assert seen.output == "/state/evals/suite/helper@3/0123456789abcdef-89abcdef"
    assert seen.judge_model is None
    assert job_key(state, results) != job_key(state, results.with_name("other"))
    outside = write_job("suite", {"tasks": []}, {}, tmp_path / "elsewhere", results, None, {})
    with pytest.raises(EvalError, match="outside the state folder"):
        in_volume(outside, state, "/state")


KUBERNETES_EXP = """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: base
  dataset: faq
  training:
    learning_rate: 2.0e-4
    epochs: 1
    executor: {type: kubernetes, namespace: ml, gpu: 1}
  variants:
    r16: {training.lora.r: 16}
  eval_suite: suite
  register_as: assistant
"""


def evaluations(root: Path) -> dict[str, Any]:
    loaded = load_desired(root)
    assert loaded.ok and loaded.desired is not None, [d.render() for d in loaded.diagnostics]
    return {
        str(resource.address): (spec, resource.fields)
        for resource, spec in loaded.desired.specs(EvaluationSpec)
    }


def test_an_experiment_on_kubernetes_evaluates_there_too(
    make_repo: Callable[..., Path],
) -> None:
    local = evaluations(make_repo())
    assert set(local) == {"Evaluation/exp/control", "Evaluation/exp/default", "Evaluation/exp/r16"}
    for spec, fields in local.values():
        assert spec.executor is None and "executor" not in fields  # the dump is unchanged
    remote = evaluations(make_repo({"specs/experiments/exp.yaml": KUBERNETES_EXP}))
    for address, (spec, fields) in remote.items():
        assert spec.executor is not None, address
        assert (spec.executor.type, spec.executor.namespace, spec.executor.gpu) == (
            "kubernetes",
            "ml",
            1,
        )
        assert fields["executor"]["namespace"] == "ml"


def test_an_adapters_evaluation_is_staged_with_its_base_and_fetched_into_an_empty_pod(
    tmp_path: Path,
) -> None:
    """Staged into a folder store and fetched by the pod's entry into an empty folder: the
    task data (a name -> path field), the adapter, and its base, which no field names."""
    state = tmp_path / ".llmops"
    base, adapter = state / "models/tiny/1", state / "models/helper/2"
    for folder, files in (
        (base, {"config.json": "{}", "model.safetensors": "weights"}),
        (adapter, {"adapter_config.json": json.dumps({"base_model_name_or_path": "../../tiny/1"})}),
    ):
        folder.mkdir(parents=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    data = tmp_path / "repo/data/eval.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"question": "q"}\n')
    results = state / "evals/suite/helper@2/0123456789abcdef-89abcdef"
    job = write_job("suite", {"tasks": []}, {"answers": data}, adapter, results, None, {})
    assert [Path(b).resolve() for b in bases(job)] == [base.resolve()]
    store = open_store(str(tmp_path / "store"))
    assert store is not None
    key = job_folder(results) / "job.json"
    written = stage(
        store,
        state,
        key,
        asdict(job),
        paths=PATH_FIELDS,
        inputs=INPUT_FIELDS,
        output=str(results),
        extra=bases(job),
    )
    assert written["task_data"] == {
        "answers": "evals/suite/helper@2/0123456789abcdef-89abcdef.job/data/answers.jsonl"
    }
    assert written["model"] == "models/helper/2" and written["judge_model"] is None

    pod = tmp_path / "pod"  # the emptyDir
    pod.mkdir()
    local, _ = prepare(store, pod, key.relative_to(state).as_posix())
    seen = EvalJob.load(local)
    assert seen.task_data == {"answers": str(pod / written["task_data"]["answers"])}
    assert Path(seen.task_data["answers"]).read_text() == data.read_text()
    assert seen.model == str(pod / "models/helper/2")
    assert (pod / "models/tiny/1/model.safetensors").read_text() == "weights"
    assert seen.output == str(pod / "evals/suite/helper@2/0123456789abcdef-89abcdef")
