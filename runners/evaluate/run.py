"""Runner `evaluate`, the run: suite tasks as lm-eval custom tasks, then llmops' own metrics."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import InvalidInput, LlmopsError
from runners.evaluate.chat import ChatTarget, chat_language_model
from runners.evaluate.compare import aggregate
from runners.evaluate.endpoint import Endpoint, EndpointError
from runners.evaluate.judge import Judge
from runners.evaluate.metrics import keyword_recall, rouge_l, token_f1
from runners.evaluate.placeholders import (
    PlaceholderError,
    Template,
    as_text,
    field_name_problem,
)
from runners.evaluate.preference import score_pairs
from runners.weights import adapter_base, tokenizer_folder

LM_EVAL_METRICS = {
    "exact_match": "exact_match",
    "accuracy": "acc",
    "word_perplexity": "word_perplexity",
}


class EvalError(LlmopsError):
    """A permanent problem with the suite, its data or the model; the message says what to do."""


@dataclass
class EvalInputs:
    suite_name: str
    suite: dict[str, Any]
    task_data: dict[str, Path]  # task name -> local JSONL rows
    model_path: Path
    out: Path
    judge_path: Path | None = None
    batch_size: int = 8  # log-likelihood requests per forward pass (lm-eval's batches)
    # generate_until answers decoding together (continuous batching); 0: lm-eval's own
    # static batches of batch_size, kept as the baseline benchmarks/eval_throughput.py measures
    generation_concurrency: int = 64
    report: Any = print
    # An OpenAI-compatible deployment to evaluate instead of loading model_path (endpoint.py)
    endpoint: Endpoint | None = None
    # A chat endpoint the suite names as its target (chat.py), its request cache file and
    # the spec path of its settings (for messages)
    chat_target: ChatTarget | None = None
    chat_cache: Path | None = None
    chat_field: str = "endpoints"


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class _Text:
    """lm-eval's doc_to_text: the suite's prompt with the row's fields, as plain text."""

    def __init__(self, template: str, what: str) -> None:
        self.template = _template(template, what)

    def __call__(self, doc: dict[str, Any]) -> str:
        try:
            return self.template(doc)
        except PlaceholderError as err:
            raise EvalError(str(err)) from err

    def __repr__(self) -> str:
        return f"llmops prompt {self.template.text!r}"


class _Target(_Text):
    """lm-eval's doc_to_target, read as its own templates read it: a string of digits is a
    choice's index, a bracketed list is a list (parsed as a literal, never evaluated)."""

    def __init__(self, template: str, what: str, choices: bool) -> None:
        super().__init__(template, what)
        self.choices = choices

    def __call__(self, doc: dict[str, Any]) -> Any:
        text = super().__call__(doc)
        if self.choices and text.isascii() and text.isdigit():
            return int(text)
        if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
                return text
        return text


class _Choices:
    """lm-eval's doc_to_choice: the row field holding the options (a list)."""

    def __init__(self, field: str) -> None:
        self.field = _field(field, "choices")

    def __call__(self, doc: dict[str, Any]) -> list[Any]:
        if self.field not in doc:
            raise EvalError(f"a row has no field '{self.field}' (the task's choices)")
        value = doc[self.field]
        if isinstance(value, list):
            return value
        try:  # a list written as text, e.g. "['yes', 'no']": a literal, never code
            parsed = ast.literal_eval(as_text(value))
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as err:
            raise EvalError(
                f"field '{self.field}' holds {as_text(value)[:60]!r}, not a list of choices"
            ) from err
        if not isinstance(parsed, list | tuple):
            raise EvalError(f"field '{self.field}' holds {as_text(value)[:60]!r}, not a list")
        return list(parsed)

    def __repr__(self) -> str:
        return f"llmops choices field {self.field!r}"


def _template(text: str, what: str) -> Template:
    try:
        return Template.of(text, what)
    except PlaceholderError as err:
        raise EvalError(str(err)) from err


def _field(name: str, what: str) -> str:
    problem = field_name_problem(name)
    if problem:
        raise EvalError(f"{what}: {problem}; name the row's field, e.g. 'answer'")
    return name


def task_name(suite: str, task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"llmops_{suite}_{task}")


def task_config(suite: str, task: dict[str, Any], data: Path) -> dict[str, Any]:
    """lm-eval's TaskConfig for one suite task. Prompt, target and choices are Python callables
    over the row (runners/evaluate/placeholders.py): lm-eval renders strings here with an
    unsandboxed Jinja environment, and suite text is never given to it."""
    kind = task["type"]
    out: dict[str, Any] = {
        "task": task_name(suite, task["name"]),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": kind,
    }
    target = "{" + _field(task.get("target", "answer"), "target") + "}"
    if kind == "generate_until":
        generation = task.get("generation") or {}
        kwargs: dict[str, Any] = {
            "until": generation.get("stop") or ["\n\n"],
            "max_gen_toks": int(generation.get("max_new_tokens", 64)),
        }
        temperature = float(generation.get("temperature", 0.0))
        kwargs.update(
            {"do_sample": True, "temperature": temperature} if temperature else {"do_sample": False}
        )
        out.update(
            doc_to_text=_Text(task.get("prompt", "{question}"), "prompt"),
            doc_to_target=_Target(target, "target", choices=False),
            generation_kwargs=kwargs,
            metric_list=[
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "ignore_punctuation": True,
                }
            ],
        )
    elif kind == "multiple_choice":
        out.update(
            doc_to_text=_Text(task.get("prompt", "{question}"), "prompt"),
            doc_to_choice=_Choices(task.get("choices", "choices")),
            doc_to_target=_Target(target, "target", choices=True),
            metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        )
    elif kind == "loglikelihood_rolling":
        out.update(
            doc_to_text="",
            doc_to_target=_Target(task.get("prompt", "{text}"), "prompt", choices=False),
            metric_list=[
                {"metric": "word_perplexity"},
                {"metric": "byte_perplexity"},
                {"metric": "bits_per_byte"},
            ],
        )
    elif kind == "loglikelihood":
        out.update(
            doc_to_text=_Text(task.get("prompt", "{question}"), "prompt"),
            doc_to_target=_Target(" " + target, "target", choices=False),
            metric_list=[{"metric": "perplexity"}, {"metric": "acc"}],
        )
    else:
        raise EvalError(f"task type '{kind}' has no custom task form")
    return out


def build_task(suite: str, task: dict[str, Any], data: Path) -> Any:
    """The lm-eval task object for one suite task over local rows (loads the rows)."""
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(config=task_config(suite, task, data))


def _limited(path: Path, limit: int | None, folder: Path) -> Path:
    if not limit:
        return path
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    target = folder / f"{path.stem}-first{limit}.jsonl"
    target.write_text("\n".join(lines[:limit]) + "\n", encoding="utf-8")
    return target


def _samples(
    task: dict[str, Any], raw: list[dict[str, Any]], tokenizer: Any
) -> list[dict[str, Any]]:
    """lm-eval's logged samples -> llmops rows: id, prompt, target, output, contributions."""
    wanted = set(task["metrics"])
    rows = []
    for sample in sorted(raw, key=lambda s: int(s["doc_id"])):
        doc = sample["doc"]
        row: dict[str, Any] = {
            "id": str(doc.get("id", sample["doc_id"])),
            "target": sample.get("target"),
            "metrics": {},
        }
        parts = row["metrics"]
        kind = task["type"]
        if kind == "generate_until":
            output = sample["filtered_resps"][0]
            row["output"] = output
            reference = str(sample.get("target", ""))
            if "exact_match" in wanted:
                parts["exact_match"] = (float(sample["exact_match"]), 1.0)
            if "token_f1" in wanted:
                parts["token_f1"] = (token_f1(output, reference), 1.0)
            if "rouge_l" in wanted:
                parts["rouge_l"] = (rouge_l(output, reference), 1.0)
            if "keyword_recall" in wanted:
                parts["keyword_recall"] = (keyword_recall(output, doc.get("keywords") or []), 1.0)
        elif kind == "multiple_choice":
            parts["accuracy"] = (float(sample["acc"]), 1.0)
        elif kind == "loglikelihood_rolling":
            loglikelihood, words = sample["word_perplexity"]
            if "word_perplexity" in wanted:
                parts["word_perplexity"] = (float(loglikelihood), float(words))
            if "perplexity" in wanted:
                text = sample["target"]
                tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                parts["perplexity"] = (float(loglikelihood), float(tokens))
        elif kind == "loglikelihood":
            if "perplexity" in wanted:
                parts["perplexity"] = (float(sample["perplexity"]), 1.0)
            if "accuracy" in wanted:
                parts["accuracy"] = (float(sample["acc"]), 1.0)
        rows.append(row)
    return rows


def evaluate(inputs: EvalInputs) -> dict[str, Any]:
    """Run every task; write samples-<task>.jsonl and results.json into inputs.out."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    out = inputs.out
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    tasks = inputs.suite["tasks"]
    # Every suite task's prompt, target and choices are checked before the model loads.
    for task in tasks:
        if task["type"] == "preference":
            _preference_rows(task, inputs.task_data[task["name"]])  # bad rows: before loading
        elif task["type"] != "lm_eval":
            task_config(inputs.suite_name, task, Path(os.devnull))
    preference = [t["name"] for t in tasks if t["type"] == "preference"]
    if preference and inputs.endpoint is not None:
        raise EvalError(
            f"task {preference[0]} is a preference task: it scores log-probabilities with and "
            "without the model's adapter, which an endpoint does not serve; evaluate the "
            "registered model instead"
        )
    names: dict[str, str] = {}
    for task in tasks:
        names[task["name"]] = (
            task["lm_eval_task"]
            if task["type"] == "lm_eval"
            else task_name(inputs.suite_name, task["name"])
        )
    manager = TaskManager()
    if inputs.chat_target is not None:
        return _chat_summary(inputs, names, manager)
    if inputs.endpoint is not None:
        try:
            served = inputs.endpoint.language_model()
        except EndpointError as err:
            raise EvalError(str(err)) from err
        return _summary(inputs, _run_tasks(inputs, names, manager, served))
    import torch

    gpu = torch.cuda.is_available()
    model_args: dict[str, Any] = {
        "pretrained": str(inputs.model_path),
        # On a GPU the model's own dtype (as serving loads it); on CPUs float32, where half
        # precision is slow or unsupported.
        "dtype": "auto" if gpu else "float32",
        "device": "cuda" if gpu else "cpu",
        "batch_size": inputs.batch_size,
        "trust_remote_code": False,
        "use_safetensors": True,
        **_adapter_args(inputs.model_path),
    }
    if inputs.generation_concurrency > 0:
        from runners.evaluate.batched import ContinuousBatchingHFLM

        lm: HFLM = ContinuousBatchingHFLM(concurrency=inputs.generation_concurrency, **model_args)
    else:
        lm = HFLM(**model_args)
    results = _run_tasks(inputs, names, manager, lm)
    return _summary(inputs, results)


def _adapter_args(folder: Path) -> dict[str, Any]:
    """A LoRA adapter folder (a training run's model/): its base model with the adapter on
    top (lm-eval's `peft`), so preference tasks can also score it with the adapter off."""
    try:
        base = adapter_base(folder)
    except InvalidInput as err:
        raise EvalError(str(err)) from err
    if base is None:
        return {}
    tokenizer = str(tokenizer_folder(folder))
    return {"pretrained": str(base), "peft": str(folder), "tokenizer": tokenizer}


def _chat_summary(inputs: EvalInputs, names: dict[str, str], manager: Any) -> dict[str, Any]:
    """The suite on a chat endpoint: generate_until tasks only, every request through the
    cache; results.json also records the endpoint's identity, settings and usage."""
    target = inputs.chat_target
    assert target is not None and inputs.chat_cache is not None
    other = [t for t in inputs.suite["tasks"] if t["type"] not in ("generate_until", "lm_eval")]
    if other:
        raise EvalError(
            f"task '{other[0]['name']}' is a {other[0]['type']} task: endpoint "
            f"'{target.name}' answers chat completions, which give no log-probabilities; "
            "only generate_until tasks run on an endpoint"
        )
    lm = chat_language_model(target, inputs.chat_cache, inputs.chat_field)
    try:
        results = _run_tasks(inputs, names, manager, lm)
    finally:
        lm.cache.close()
    return _summary(inputs, results, {"endpoint": lm.usage()})


def _summary(
    inputs: EvalInputs, results: list[TaskResult], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """results.json: every task's metrics, sample count and time."""
    out = inputs.out
    summary = {
        **(extra or {}),
        "suite": inputs.suite_name,
        "metrics": {f"{r.task}/{k}": v for r in results for k, v in r.metrics.items()},
        "tasks": {
            r.task: {
                "samples": len(r.samples),
                "seconds": round(r.seconds, 3),
                "judge_unparsed": sum(
                    1 for row in r.samples if tuple(row["metrics"].get("judge", ())) == (0.0, 0.0)
                ),
            }
            for r in results
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _run_tasks(
    inputs: EvalInputs, names: dict[str, str], manager: Any, lm: Any
) -> list[TaskResult]:
    """Each task through lm-eval on the loaded model, then llmops' metrics per sample."""
    from lm_eval import simple_evaluate

    out = inputs.out
    tasks = inputs.suite["tasks"]
    judge = None
    results: list[TaskResult] = []
    for task in tasks:
        if task["type"] == "preference":
            results.append(_preference_task(inputs, task, lm))
            continue
        name = names[task["name"]]
        inputs.report(f"{inputs.suite_name}/{task['name']}: {task['type']} through lm-eval")
        began = time.perf_counter()
        try:
            if task["type"] == "lm_eval":
                selected: Any = name
            else:
                data = _limited(inputs.task_data[task["name"]], task.get("limit"), out / "tasks")
                selected = build_task(inputs.suite_name, task, data)
            raw = simple_evaluate(
                model=lm,
                tasks=[selected],
                task_manager=manager,
                log_samples=True,
                apply_chat_template=bool(
                    task.get("chat_template", True) and task["type"] == "generate_until"
                ),
                limit=task.get("limit") if task["type"] == "lm_eval" else None,
                bootstrap_iters=0,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
                fewshot_random_seed=0,
            )
        except (KeyError, ValueError, FileNotFoundError) as err:
            raise EvalError(f"lm-eval could not run task '{task['name']}': {err}") from err
        seconds = time.perf_counter() - began
        samples = _samples(task, raw["samples"][name], lm.tokenizer)
        if "judge" in task["metrics"]:
            if judge is None:
                judge = Judge(inputs.judge_path, inputs.suite["judge"])
            for row, sample in zip(
                samples, sorted(raw["samples"][name], key=lambda s: int(s["doc_id"])), strict=True
            ):
                score, text = judge.score(
                    sample["arguments"][0][0], str(row["target"]), row.get("output", "")
                )
                row["judge_output"] = text
                row["metrics"]["judge"] = (score, 1.0) if score is not None else (0.0, 0.0)
        metrics = {
            metric: aggregate(
                metric, [s["metrics"][metric] for s in samples if metric in s["metrics"]]
            )
            for metric in task["metrics"]
            if metric not in ("latency", "throughput")
        }
        lm_eval_values = raw["results"][name]
        for ours, theirs in LM_EVAL_METRICS.items():
            if ours in metrics and f"{theirs},none" in lm_eval_values:
                metrics[ours] = float(lm_eval_values[f"{theirs},none"])
        if "latency" in task["metrics"]:
            metrics["latency"] = seconds / max(len(samples), 1)
            for row in samples:
                row["metrics"]["latency"] = (metrics["latency"], 1.0)
        if "throughput" in task["metrics"]:
            metrics["throughput"] = len(samples) / seconds if seconds else 0.0
        # NaN means no sample counted (e.g. no judge score parsed): reported as missing.
        metrics = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()
        }
        results.append(TaskResult(task["name"], metrics, samples, seconds))
        with (out / f"samples-{task['name']}.jsonl").open("w", encoding="utf-8") as handle:
            for row in samples:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return results


def _preference_fields(task: dict[str, Any]) -> tuple[_Text, str, str]:
    """The prompt template and the chosen and rejected field names of a preference task."""
    prompt = _Text(task.get("prompt", "{prompt}"), "prompt")
    chosen = _field(task.get("chosen", "chosen"), "chosen")
    rejected = _field(task.get("rejected", "rejected"), "rejected")
    return prompt, chosen, rejected


def _preference_rows(task: dict[str, Any], path: Path) -> list[tuple[str, Any, str, str]]:
    """(id, prompt, chosen, rejected) per row; a bad row is an EvalError naming file:line.
    With the default prompt, a row's prompt given as messages (a chat's earlier turns) stays
    a list of messages, which the chat template renders as the conversation."""
    prompt, chosen, rejected = _preference_fields(task)
    as_written = "prompt" not in task or task["prompt"] == "{prompt}"
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}:{number}: invalid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise EvalError(f"{path}:{number}: a row must be a JSON object")
        for name in (chosen, rejected):
            if not isinstance(row.get(name), str):
                raise EvalError(
                    f"{path}:{number}: field '{name}' must be a string (task "
                    f"'{task['name']}' reads the {'chosen' if name == chosen else 'rejected'} "
                    "answer from it)"
                )
        asked: Any = prompt(row)
        if as_written and isinstance(row.get("prompt"), list):
            messages = row["prompt"]
            if not messages or not all(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise EvalError(
                    f"{path}:{number}: field 'prompt' must be a string or a non-empty list of "
                    "{role, content} messages"
                )
            asked = [{"role": m["role"], "content": m["content"]} for m in messages]
        rows.append((str(row.get("id", number)), asked, row[chosen], row[rejected]))
        if task.get("limit") and len(rows) >= task["limit"]:
            break
    return rows


def _preference_task(inputs: EvalInputs, task: dict[str, Any], lm: Any) -> TaskResult:
    """A preference task on the loaded model: runners/evaluate/preference.py."""
    inputs.report(f"{inputs.suite_name}/{task['name']}: preference pairs by log-probability")
    began = time.perf_counter()
    rows = _preference_rows(task, inputs.task_data[task["name"]])
    scores = score_pairs(
        lm.model,
        lm.tokenizer,
        [(prompt, chosen, rejected) for _, prompt, chosen, rejected in rows],
        chat=bool(task.get("chat_template", True)),
        batch_size=inputs.batch_size,
    )
    seconds = time.perf_counter() - began
    samples = []
    for (row_id, prompt, chosen, rejected), score in zip(rows, scores, strict=True):
        samples.append(
            {
                "id": row_id,
                "prompt": prompt,
                "target": chosen,
                "rejected": rejected,
                **{k: v for k, v in score.items() if k.endswith("logprob")},
                "metrics": {
                    "preference_accuracy": (score["preferred"], 1.0),
                    "logprob_margin": (score["margin"], 1.0),
                },
            }
        )
    metrics: dict[str, float | None] = {
        metric: aggregate(metric, [s["metrics"][metric] for s in samples])
        for metric in task["metrics"]
        if metric != "latency"
    }
    if "latency" in task["metrics"]:
        metrics["latency"] = seconds / max(len(samples), 1)
        for sample in samples:
            sample["metrics"]["latency"] = (metrics["latency"], 1.0)
    metrics = {k: (None if v is None or math.isnan(v) else v) for k, v in metrics.items()}
    with (inputs.out / f"samples-{task['name']}.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return TaskResult(task["name"], metrics, samples, seconds)  # type: ignore[arg-type]


def load_samples(folder: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """'task/metric' -> {sample id: contribution} from a results folder."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for path in sorted(folder.glob("samples-*.jsonl")):
        task = path.stem.removeprefix("samples-")
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            for metric, (value, weight) in row["metrics"].items():
                out.setdefault(f"{task}/{metric}", {})[row["id"]] = (value, weight)
    return out
