"""Spec API, kind EvalSuite: tasks over local data, metrics, judge model and gates."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from controller.api.arena import DeploymentContestant, EndpointContestant, contestant_name
from controller.api.common import Name, Ref, RepoPath, Resource, Strict
from runners.evaluate.placeholders import field_name_problem, problems

Metric = Literal[
    "perplexity",
    "word_perplexity",
    "exact_match",
    "token_f1",
    "accuracy",
    "rouge_l",
    "keyword_recall",
    "judge",
    "latency",
    "throughput",
    "preference_accuracy",
    "logprob_margin",
]
PREFERENCE_METRICS = ("preference_accuracy", "logprob_margin")


class FileData(Strict):
    """Evaluation rows from a local JSONL file."""

    type: Literal["file"]
    path: RepoPath


class DatasetData(Strict):
    """Evaluation rows from a split of a prepared Dataset."""

    type: Literal["dataset"]
    dataset: Ref
    split: Literal["train", "validation", "test"] = "test"


TaskData = Annotated[FileData | DatasetData, Field(discriminator="type")]


class Generation(Strict):
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0)
    stop: list[str] = Field(default_factory=list)


class Task(Strict):
    """One task of a suite; run through lm-evaluation-harness as a custom task."""

    name: Name
    type: Literal[
        "generate_until",
        "loglikelihood",
        "loglikelihood_rolling",
        "multiple_choice",
        "lm_eval",
        "preference",
    ] = Field(
        description="preference: held-out (prompt, chosen, rejected) rows scored by "
        "log-probability (an adapter against its base: DPO's implicit reward), not via lm-eval."
    )
    data: TaskData | None = None
    lm_eval_task: str | None = Field(
        default=None, description="A built-in lm-eval task name (type lm_eval); data must be local."
    )
    prompt: str = Field(
        default="{question}",
        description="Prompt text; {field} inserts the row's field, {{ and }} are literal braces. "
        "Nothing else is a template: no expressions, attribute access or statements.",
    )
    target: str = Field(
        default="answer", description="Row field holding the reference (a field name)."
    )
    choices: str = Field(
        default="choices",
        description="Row field with the options (multiple_choice; a field name).",
    )
    # Left out of the dump at their defaults, so suites written before preference tasks keep
    # their digests (and plan no-op).
    chosen: str = Field(
        default="chosen",
        description="Row field with the preferred answer (preference).",
        exclude_if=lambda value: value == "chosen",
    )
    rejected: str = Field(
        default="rejected",
        description="Row field with the dispreferred answer (preference).",
        exclude_if=lambda value: value == "rejected",
    )
    chat_template: bool = Field(default=True, description="Wrap the prompt in the chat template.")
    metrics: list[Metric] = Field(min_length=1)
    generation: Generation = Field(default_factory=Generation)
    limit: int | None = Field(default=None, ge=1, description="Only the first N rows.")

    @field_validator("prompt")
    @classmethod
    def _placeholders_only(cls, value: str) -> str:
        """Suite text reaches no template engine (issue 27); say so where it would have."""
        found = problems(value)
        if found:
            raise ValueError(f"{found[0].message}; {found[0].hint}")
        return value

    @field_validator("target", "choices", "chosen", "rejected")
    @classmethod
    def _field_name(cls, value: str) -> str:
        problem = field_name_problem(value)
        if problem:
            raise ValueError(f"{problem}; name the row's field, e.g. 'answer'")
        return value

    @model_validator(mode="after")
    def _data_or_builtin(self) -> Task:
        if self.type == "lm_eval":
            if not self.lm_eval_task:
                raise ValueError("type 'lm_eval' needs 'lm_eval_task', a built-in task name")
        elif self.data is None:
            raise ValueError(f"type '{self.type}' needs 'data' (a file or a dataset split)")
        if self.type == "preference":
            if "prompt" not in self.model_fields_set:
                self.prompt = "{prompt}"  # preference rows: prompt, chosen, rejected
            other = [m for m in self.metrics if m not in (*PREFERENCE_METRICS, "latency")]
            if other:
                raise ValueError(
                    f"type 'preference' computes {', '.join(PREFERENCE_METRICS)} (and latency), "
                    f"not {', '.join(other)}"
                )
        else:
            scored = [m for m in self.metrics if m in PREFERENCE_METRICS]
            if scored:
                raise ValueError(
                    f"{', '.join(scored)} need type 'preference' (rows of prompt, chosen and "
                    f"rejected); task type '{self.type}' cannot compute them"
                )
        return self


class Judge(Strict):
    """LLM-as-judge: a registered model scores answers against a rubric."""

    model: Ref
    rubric: str = Field(min_length=1)
    scale_min: int = 1
    scale_max: int = 5


class Gate(Strict):
    """A pass/fail rule on one metric: 'task/metric'. Judged on the confidence bound."""

    metric: str = Field(pattern=r"^[a-z0-9-]+/[a-z0-9_]+$", description="'task/metric'.")
    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(default=None, ge=0, description="Against the baseline.")
    non_inferiority_margin: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_rule(self) -> Gate:
        if all(v is None for v in (self.min, self.max, self.max_drop, self.non_inferiority_margin)):
            raise ValueError(
                "a gate needs at least one of min, max, max_drop, non_inferiority_margin"
            )
        return self


class Bootstrap(Strict):
    samples: int = Field(default=1000, ge=100, le=100_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0


def _endpoint_type(value: object) -> str:
    if isinstance(value, dict):
        return "deployment" if "deployment" in value and "endpoint" not in value else "endpoint"
    return "deployment" if isinstance(value, DeploymentContestant) else "endpoint"


# An endpoint the suite is run on: `{endpoint: {base_url, model, api_key: {env}}, name}` or
# `{deployment: NAME}`, as an Arena's contestants are written.
SuiteEndpoint = Annotated[
    Annotated[EndpointContestant, Tag("endpoint")]
    | Annotated[DeploymentContestant, Tag("deployment")],
    Discriminator(_endpoint_type),
]


class EvalSuiteSpec(Strict):
    description: str = ""
    tasks: list[Task] = Field(min_length=1)
    judge: Judge | None = None
    gates: list[Gate] = Field(default_factory=list)
    bootstrap: Bootstrap = Field(default_factory=Bootstrap)
    baseline: RepoPath | None = Field(
        default=None, description="Blessed baseline file (written by `llmops bless`)."
    )
    smoke_prompts: int = Field(
        default=3, ge=0, le=50, description="Rows a deployment's readiness check uses."
    )
    # Left out of the dump when empty, so suites written before endpoint targets keep their
    # digests (and plan no-op).
    endpoints: list[SuiteEndpoint] = Field(
        default_factory=list,
        exclude_if=lambda value: not value,
        description="OpenAI-compatible chat endpoints the suite is run on at apply, each an "
        "Evaluation/<suite>/<name> of the plan: `{endpoint: {base_url, model, api_key: "
        "{env: LLMOPS_KEY_...}}, name}` or `{deployment: NAME}`. generate_until tasks only.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvalSuiteSpec:
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dupes)}")
        if self.endpoints:
            targets = [contestant_name(entry) for entry in self.endpoints]
            twice = sorted({n for n in targets if targets.count(n) > 1})
            if twice:
                raise ValueError(
                    f"'endpoints' names {', '.join(twice)} twice; give each a new 'name'"
                )
            scored = [t for t in self.tasks if t.type != "generate_until"]
            if scored:
                raise ValueError(
                    f"'endpoints': task '{scored[0].name}' is a {scored[0].type} task, but an "
                    "endpoint answers chat completions, which give no log-probabilities; only "
                    "generate_until tasks run on an endpoint (move the others to another suite)"
                )
        uses_judge = any("judge" in t.metrics for t in self.tasks)
        if uses_judge and self.judge is None:
            raise ValueError("metric 'judge' needs a 'judge' section naming the judge model")
        for gate in self.gates:
            task, _, metric = gate.metric.partition("/")
            if task not in names:
                raise ValueError(f"gate '{gate.metric}' names unknown task '{task}'")
            task_metrics = next(t.metrics for t in self.tasks if t.name == task)
            if metric not in task_metrics:
                raise ValueError(f"gate '{gate.metric}': task '{task}' does not compute '{metric}'")
        return self


class EvalSuite(Resource):
    """A set of evaluation tasks and the gates a regression test applies."""

    KIND: ClassVar[str] = "EvalSuite"
    FOLDER: ClassVar[str] = "evals"
    kind: Literal["EvalSuite"]
    spec: EvalSuiteSpec


__all__ = ["EvalSuite", "EvalSuiteSpec", "Gate", "Name", "Task"]
