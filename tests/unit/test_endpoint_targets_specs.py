"""Endpoints an EvalSuite is run on and teacher endpoints of a Dataset's augment step: spec
validation (tasks an endpoint can run, names, key variables, teacher or model), resolution
(an `Evaluation/<suite>/<name>` in the plan, a Deployment orders it, a settings change
re-evaluates it), and specs without them keep their dump, so their digests do not move."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from controller.api.dataset import AugmentStep
from controller.api.evalsuite import EvalSuiteSpec
from controller.api.evaluation import EvaluationSpec
from controller.load.desired import load_desired
from controller.plan.planner import plan
from controller.plan.types import ObservedResource, ObservedState

TASK = {
    "name": "qa",
    "type": "generate_until",
    "data": {"type": "file", "path": "data/eval.jsonl"},
    "metrics": ["rouge_l"],
}
HOSTED = {
    "endpoint": {
        "base_url": "https://api.example.com/v1",
        "model": "large",
        "api_key": {"env": "LLMOPS_KEY_HOSTED"},
    },
    "name": "hosted",
}
SUITE = """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {{name: suite}}
spec:
  tasks:
    - name: answers
      type: generate_until
      data: {{type: file, path: data/eval.jsonl}}
      metrics: [rouge_l]
  endpoints:
    - endpoint:
        base_url: https://api.example.com/v1
        model: large
        api_key: {{env: LLMOPS_KEY_HOSTED}}
        concurrency: {concurrency}
      name: hosted
    - {{deployment: assistant}}
"""


def test_a_suite_names_endpoints_and_deployments() -> None:
    spec = EvalSuiteSpec.model_validate(
        {"tasks": [TASK], "endpoints": [HOSTED, {"deployment": "assistant"}]}
    )
    dumped = spec.model_dump(mode="json")["endpoints"]
    assert dumped[0]["endpoint"]["api_key"] == {"env": "LLMOPS_KEY_HOSTED"}
    assert dumped[1]["deployment"] == "assistant"


def test_a_suite_without_endpoints_dumps_as_before() -> None:
    assert "endpoints" not in EvalSuiteSpec.model_validate({"tasks": [TASK]}).model_dump()
    evaluation = EvaluationSpec(suite="suite", subject="model:base")
    assert evaluation.model_dump() == {"suite": "suite", "subject": "model:base"}
    assert evaluation.endpoint_name is None
    assert EvaluationSpec(suite="s", subject="endpoint:hosted").endpoint_name == "hosted"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"tasks": [{**TASK, "type": "loglikelihood_rolling", "metrics": ["perplexity"]}]},
            "only generate_until tasks run on an endpoint",
        ),
        ({"endpoints": [HOSTED, HOSTED]}, "'endpoints' names hosted twice"),
        (
            {
                "endpoints": [
                    {**HOSTED, "endpoint": {**HOSTED["endpoint"], "api_key": {"env": "AWS_SECRET"}}}
                ]
            },
            "only LLMOPS_KEY_<NAME> variables",
        ),
    ],
)
def test_what_an_endpoint_cannot_do_is_said(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EvalSuiteSpec.model_validate({"tasks": [TASK], "endpoints": [HOSTED], **change})


def test_a_teacher_endpoint_or_a_model_writes_augmented_rows() -> None:
    base = {"step": "augment", "method": "self_instruct", "count": 4}
    step = AugmentStep.model_validate({**base, "endpoint": HOSTED["endpoint"]})
    assert step.model is None and step.endpoint is not None
    assert AugmentStep.model_validate({**base, "endpoint": {"deployment": "assistant"}}).endpoint
    assert "endpoint" not in AugmentStep.model_validate({**base, "model": "base"}).model_dump()
    with pytest.raises(ValidationError, match="not both"):
        AugmentStep.model_validate({**base, "model": "base", "endpoint": HOSTED["endpoint"]})
    with pytest.raises(ValidationError, match="or 'endpoint', an OpenAI-compatible teacher"):
        AugmentStep.model_validate(base)
    with pytest.raises(ValidationError, match="only LLMOPS_KEY_"):
        AugmentStep.model_validate(
            {**base, "endpoint": {**HOSTED["endpoint"], "api_key": {"env": "GITHUB_TOKEN"}}}
        )


def test_each_endpoint_is_an_evaluation_of_the_plan(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/evals/suite.yaml": SUITE.format(concurrency=4)})
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    assert loaded.desired is not None
    resources = loaded.desired.resources
    hosted = resources["Evaluation/suite/hosted"]
    assert hosted.spec_as(EvaluationSpec).endpoint_name == "hosted"
    assert hosted.fields["endpoint"]["endpoint"]["model"] == "large"
    assert "EvalSuite/suite" in hosted.depends_on
    served = resources["Evaluation/suite/assistant"]
    # a Deployment orders its evaluation after the rollout, but is not a digest input
    assert "Deployment/assistant" in served.depends_on
    assert "Deployment/assistant" not in served.inputs
    actions = {a.address: a for a in plan(loaded.desired, ObservedState(resources={})).actions}
    assert actions["Evaluation/suite/hosted"].kind.value == "create"

    # another concurrency: the plan re-evaluates that endpoint for it; the suite changed too,
    # so the other is evaluated again (its requests are in the cache: nothing is asked)
    observed = ObservedState(
        resources={
            address: ObservedResource(
                address=address,
                kind=r.kind,
                digest=r.digest,
                fields=r.fields,
                inputs=r.inputs,
                code_version=r.code_version,
            )
            for address, r in resources.items()
        }
    )
    (root / "specs/evals/suite.yaml").write_text(SUITE.format(concurrency=8))
    changed = load_desired(root)
    assert changed.desired is not None
    actions = {a.address: a for a in plan(changed.desired, observed).actions}
    assert actions["Evaluation/suite/hosted"].kind.value == "reevaluate"
    assert "concurrency: 4 -> 8" in actions["Evaluation/suite/hosted"].reason
    assert actions["Evaluation/suite/assistant"].kind.value == "reevaluate"
    assert "concurrency" not in actions["Evaluation/suite/assistant"].reason
