"""Preference training (DPO, ORPO, KTO) on a tiny real Llama, scored by the preference eval task.

The synthetic pairs differ in a known way: the prompt names a word, the chosen answer ends
with that word and the rejected one with the other word. The untrained model prefers one
word whatever the prompt says, so it is right on about half of the held-out pairs; a trained
one must read the prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.evaluate.compare import judge_gates, paired_bootstrap
from runners.evaluate.run import EvalError, EvalInputs, evaluate, load_samples
from runners.train import log as train_log
from runners.train.job import TrainError, TrainJob
from runners.train.loop import FAULT_ENV, train

WORDS = ("CSV", "Paris")


def pairs(count: int, first: int) -> list[dict[str, Any]]:
    out = []
    for i in range(first, first + count):
        good, bad = WORDS[i % 2], WORDS[1 - i % 2]
        out.append(
            {
                "prompt": f"Say {good} for number {i}.",
                "chosen": f"The answer is {good}.",
                "rejected": f"The answer is {bad}.",
            }
        )
    return out


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    train_rows = pairs(64, 0)
    unpaired = [
        {"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"}
        for r in train_rows
        for key in ("chosen", "rejected")
    ]
    return {
        "train": write(tmp_path / "train.jsonl", train_rows),
        "validation": write(tmp_path / "validation.jsonl", pairs(8, 300)),
        "unpaired": write(tmp_path / "unpaired.jsonl", unpaired),
        "heldout": write(tmp_path / "heldout.jsonl", pairs(40, 500)),
    }


def job(
    tiny_model: Path, train_file: Path, out: Path, fmt: str = "preference", **training: Any
) -> TrainJob:
    config: dict[str, Any] = {
        "method": "lora",
        "objective": "dpo",
        "max_steps": 40,
        "batch_size": 8,
        "learning_rate": 1e-2,
        "max_seq_len": 64,
        "seed": 0,
        "lora": {
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        },
    }
    config.update(training)
    return TrainJob(
        run_id="prefs/default",
        base_model=str(tiny_model),
        train_file=str(train_file),
        output=str(out),
        format=fmt,
        training=config,
    )


SUITE = {
    "tasks": [
        {
            "name": "pairs",
            "type": "preference",
            "data": {"type": "file", "path": "heldout.jsonl"},
            "metrics": ["preference_accuracy", "logprob_margin"],
        }
    ]
}


def scores(model: Path, heldout: Path, out: Path) -> dict[str, float]:
    """The preference task through the evaluate runner: (accuracy, mean margin)."""
    summary = evaluate(
        EvalInputs("prefs", SUITE, {"pairs": heldout}, model, out, report=lambda _: None)
    )
    return summary["metrics"]


def test_dpo_lifts_held_out_preference_accuracy(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    before = scores(tiny_model, data["heldout"], tmp_path / "eval-before")
    assert 0.3 <= before["pairs/preference_accuracy"] <= 0.7
    trained = job(tiny_model, data["train"], tmp_path / "run", eval_interval=20)
    trained.eval_file = str(data["validation"])
    result = train(trained)
    assert result["objective"] == "dpo" and result["model_kind"] == "adapter"
    assert result["steps"] == 40 and result["final_eval_loss"] < 0.6931
    after = scores(tmp_path / "run/model", data["heldout"], tmp_path / "eval-after")
    print(f"dpo held-out preference accuracy {before} -> {after}")
    assert after["pairs/preference_accuracy"] >= 0.9
    assert after["pairs/logprob_margin"] > before["pairs/logprob_margin"] + 0.5
    samples = (tmp_path / "eval-after/samples-pairs.jsonl").read_text().splitlines()
    first = json.loads(samples[0])
    # An adapter is scored against its base: the reference log-probabilities are recorded.
    assert {"chosen_logprob", "reference_chosen_logprob"} <= set(first)
    records = train_log.read_log(tmp_path / "run" / train_log.LOG_FILE)
    steps = train_log.training_steps(records)
    assert len(steps) == 40
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert all(key in r for r in steps)
    # Tokens read per step (chosen and rejected, no padding) and the step's speed, as in SFT.
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in steps)
    assert train_log.mean_tokens_per_s(records) is not None
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 20, 40]
    assert (tmp_path / "run/curves.png").stat().st_size > 0
    # Gated like any metric: the paired comparison the controller makes, then its gates.
    base, tuned = load_samples(tmp_path / "eval-before"), load_samples(tmp_path / "eval-after")
    comparisons = {
        metric: paired_bootstrap(metric, base[metric], tuned[metric], samples=200)
        for metric in ("pairs/preference_accuracy", "pairs/logprob_margin")
    }
    assert comparisons["pairs/preference_accuracy"].low > 0  # significantly better
    gates = [
        {"metric": "pairs/preference_accuracy", "min": 0.9},
        {"metric": "pairs/logprob_margin", "max_drop": 0.0},
    ]
    assert all(g.passed for g in judge_gates(gates, comparisons, after))
    swapped = judge_gates(gates, {m: paired_bootstrap(m, tuned[m], base[m]) for m in base}, before)
    assert not any(g.passed for g in swapped)


def test_dpo_full_fine_tuning_against_a_frozen_copy(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    result = train(
        job(
            tiny_model,
            data["train"],
            tmp_path / "run",
            method="full",
            learning_rate=2e-3,
            max_steps=16,
        )
    )
    assert result["model_kind"] == "full"
    assert (tmp_path / "run/model/model.safetensors").is_file()
    after = scores(tmp_path / "run/model", data["heldout"], tmp_path / "eval")
    print(f"dpo full held-out preference accuracy {after}")
    assert after["pairs/preference_accuracy"] >= 0.9


def test_kto_on_unpaired_rows(tiny_model: Path, data: dict[str, Path], tmp_path: Path) -> None:
    result = train(
        job(
            tiny_model,
            data["unpaired"],
            tmp_path / "run",
            fmt="unpaired",
            objective="kto",
        )
    )
    assert result["objective"] == "kto"
    after = scores(tmp_path / "run/model", data["heldout"], tmp_path / "eval")
    print(f"kto held-out preference accuracy {after}")
    assert after["pairs/preference_accuracy"] >= 0.8


def test_orpo_without_a_reference_model(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    result = train(
        job(
            tiny_model,
            data["train"],
            tmp_path / "run",
            objective="orpo",
            learning_rate=2e-2,
            preference={"beta": 1.0},
        )
    )
    assert result["objective"] == "orpo"
    steps = train_log.training_steps(train_log.read_log(tmp_path / "run/log.jsonl"))
    assert all("log_odds_ratio" in r and "nll_loss" in r for r in steps)
    after = scores(tmp_path / "run/model", data["heldout"], tmp_path / "eval")
    print(f"orpo held-out preference accuracy {after}")
    assert after["pairs/preference_accuracy"] >= 0.8


def test_killed_dpo_run_resumes_to_the_same_final_loss(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    settings = {"max_steps": 6, "checkpoint_interval": 2}
    reference = train(job(tiny_model, data["train"], tmp_path / "reference", **settings))
    crashed = job(tiny_model, data["train"], tmp_path / "crashed", **settings)
    crashed.save(tmp_path / "job.json")
    died = subprocess.run(
        [sys.executable, "-m", "runners.train", str(tmp_path / "job.json")],
        env={**os.environ, FAULT_ENV: "5"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 137, died.stderr[-2000:]
    assert not (tmp_path / "crashed/result.json").exists()
    assert sorted(p.name for p in (tmp_path / "crashed/checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    resumed = subprocess.run(
        [sys.executable, "-m", "runners.train", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    result = json.loads((tmp_path / "crashed/result.json").read_text())
    print(f"dpo final loss {reference['final_loss']!r} straight, {result['final_loss']!r} resumed")
    assert abs(result["final_loss"] - reference["final_loss"]) < 1e-4
    resumed_losses = train_log.losses(train_log.read_log(tmp_path / "crashed/log.jsonl"))
    straight = train_log.losses(train_log.read_log(tmp_path / "reference/log.jsonl"))
    assert resumed_losses == pytest.approx(straight, abs=1e-4) and len(straight) == 6
    assert '"event": "resumed", "step": 4' in (tmp_path / "crashed/log.jsonl").read_text()


def test_bf16_dpo_runs(tiny_model: Path, data: dict[str, Path], tmp_path: Path) -> None:
    result = train(job(tiny_model, data["train"], tmp_path / "run", max_steps=2, precision="bf16"))
    assert result["steps"] == 2 and 0 < result["final_loss"] < 1


def test_bad_rows_name_file_line_and_field(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    rows = pairs(4, 0)
    del rows[2]["rejected"]
    bad = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TrainError, match=r"bad\.jsonl:3: missing field 'rejected'"):
        train(job(tiny_model, bad, tmp_path / "a"))
    labelled = write(
        tmp_path / "labels.jsonl",
        [
            {"prompt": "p", "completion": "c", "label": True},
            {"prompt": "p", "completion": "c", "label": "yes"},
        ],
    )
    with pytest.raises(TrainError, match=r"labels\.jsonl:2: field 'label' must be true"):
        train(job(tiny_model, labelled, tmp_path / "b", fmt="unpaired", objective="kto"))


def test_objective_needs_its_format(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TrainError, match="objective 'dpo' trains on preference rows.*'unpaired'"):
        train(job(tiny_model, data["unpaired"], tmp_path / "a", fmt="unpaired"))
    with pytest.raises(TrainError, match="batch_size to 2"):
        train(
            job(
                tiny_model,
                data["unpaired"],
                tmp_path / "b",
                fmt="unpaired",
                objective="kto",
                batch_size=1,
            )
        )


def test_preference_task_names_a_bad_row(tiny_model: Path, tmp_path: Path) -> None:
    rows = pairs(3, 0)
    rows[1]["chosen"] = None
    heldout = write(tmp_path / "heldout.jsonl", rows)
    with pytest.raises(EvalError, match=r"heldout\.jsonl:2: field 'chosen' must be a string"):
        scores(tiny_model, heldout, tmp_path / "eval")


PREFERENCE_SPECS = {
    "specs/datasets/pairs.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: pairs}
spec:
  format: preference
  sources:
    - {type: file, path: data/pairs.jsonl, mapping: {chosen: good, rejected: bad}}
  steps: [{step: normalize}, {step: redact_pii}, {step: dedup}]
  splits: {train: 0.9, validation: 0.1, test: 0.0}
""",
    "specs/experiments/prefs.yaml": """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: prefs}
spec:
  base_model: tiny
  dataset: pairs
  training:
    objective: dpo
    preference: {beta: 0.1, loss_type: sigmoid}
    max_steps: 4
    batch_size: 8
    learning_rate: 1.0e-2
    max_seq_len: 64
    eval_interval: 2
    checkpoint_interval: 2
    lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}
  register_as: preferred
""",
}


def test_dpo_experiment_through_the_controller(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A preference Dataset (prepared: normalized, redacted, deduplicated) trains an
    Experiment with objective dpo, registered like any run."""
    import shutil

    from rich.console import Console

    from controller.apply.train import Trainer
    from controller.load.desired import load_desired
    from controller.workspace import open_registry
    from tests.tiny import model_spec

    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    for relative, text in PREFERENCE_SPECS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    (root / "specs/models").mkdir(parents=True)
    (root / "specs/models/tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"})
    )
    shutil.copytree(tiny_model, root / "models/tiny")
    rows = [
        {"prompt": r["prompt"], "good": r["chosen"] + " Mail ann@example.org", "bad": r["rejected"]}
        for r in pairs(48, 0)
    ]
    (root / "data").mkdir()
    write(root / "data/pairs.jsonl", rows + rows[:6])  # six duplicates
    (root / ".gitignore").write_text(".llmops/\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    loaded = load_desired(root)
    assert loaded.ok, [d.render() for d in loaded.diagnostics]
    outcome = Trainer(loaded, open_registry(root), Console(quiet=True)).train("prefs", "default")
    assert outcome.status == "trained" and outcome.ref == "preferred@1"
    registry = open_registry(root)
    dataset = registry.datasets.find("pairs")
    assert dataset is not None
    version = registry.find("preferred@1")
    assert {"adapter_model.safetensors", "training/log.jsonl"} <= {f.path for f in version.files}
    prepared = list((root / ".llmops").rglob("train.jsonl"))
    prepared_rows = [json.loads(line) for p in prepared for line in p.read_text().splitlines()]
    assert prepared_rows and all("ann@example.org" not in r["chosen"] for r in prepared_rows)
    assert len({r["prompt"] for r in prepared_rows}) == len(prepared_rows)  # deduplicated
    logs = list((root / ".llmops").rglob("log.jsonl"))
    steps = train_log.training_steps(train_log.read_log(logs[0]))
    assert len(steps) == 4 and all("rewards/margins" in r for r in steps)


def test_health_alarms_stop_a_diverging_dpo_run(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    from runners.train.job import UnhealthyRun

    with pytest.raises(UnhealthyRun) as err:
        train(job(tiny_model, data["train"], tmp_path / "run", learning_rate=1e3, max_steps=6))
    assert f"at step {err.value.step}" in str(err.value)
    assert err.value.layer and "lora" in err.value.layer
    assert "learning_rate" in str(err.value)


def test_pair_scores_are_the_answer_log_likelihoods(tiny_model: Path) -> None:
    """score_pairs against transformers' own loss over the answer tokens (prompt masked)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runners.evaluate.preference import score_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = pairs(3, 0)
    scored = score_pairs(
        model, tokenizer, [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    )

    def loglikelihood(prompt: str, answer: str) -> float:
        user = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": answer}], tokenize=False
        )
        ids = tokenizer(whole, add_special_tokens=False, return_tensors="pt")["input_ids"]
        start = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        labels = ids.clone()
        labels[:, :start] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        return -float(loss) * (ids.shape[1] - start)

    for row, score in zip(rows, scored, strict=True):
        chosen = loglikelihood(row["prompt"], row["chosen"])
        rejected = loglikelihood(row["prompt"], row["rejected"])
        assert score["chosen_logprob"] == pytest.approx(chosen, abs=1e-4)
        assert score["margin"] == pytest.approx(chosen - rejected, abs=1e-4)
        assert score["preferred"] == float(chosen > rejected)
        assert "reference_chosen_logprob" not in score  # a plain model has no reference


def two_turn_pairs(count: int, first: int) -> list[dict[str, Any]]:
    """Pairs whose word is named only in the chat's first turn: the last user message asks
    for "my word", so a model that never sees the earlier turns cannot tell which it is."""
    out = []
    for i in range(first, first + count):
        good, bad = WORDS[i % 2], WORDS[1 - i % 2]
        out.append(
            {
                "prompt": [
                    {"role": "user", "content": f"My word is {good}."},
                    {"role": "assistant", "content": "Noted."},
                    {"role": "user", "content": f"Say my word for number {i}."},
                ],
                "chosen": f"The answer is {good}.",
                "rejected": f"The answer is {bad}.",
            }
        )
    return out


def test_a_two_turn_chat_trains_and_scores_as_messages(tiny_model: Path, tmp_path: Path) -> None:
    """A pair's prompt given as messages (a collected chat's earlier turns) reaches trl as a
    conversation rendered by the chat template, trains, and the preference task scores it
    the same way; with the earlier turns cut, training reads fewer tokens and the scores
    differ (the answer is conditioned on less)."""
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    from runners.train.preference import _conversational

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = two_turn_pairs(16, 0)
    rendered = maybe_apply_chat_template(_conversational(rows[0]), tokenizer)
    assert rendered["prompt"] == tokenizer.apply_chat_template(
        rows[0]["prompt"], add_generation_prompt=True, tokenize=False
    )
    assert "My word is CSV." in rendered["prompt"] and "Noted." in rendered["prompt"]

    last_turn = [{**r, "prompt": r["prompt"][-1]["content"]} for r in rows]
    read = {}
    for name, data in (("chat", rows), ("last", last_turn)):
        result = train(
            job(tiny_model, write(tmp_path / f"{name}.jsonl", data), tmp_path / name, max_steps=2)
        )
        assert result["steps"] == 2
        steps = train_log.training_steps(train_log.read_log(tmp_path / name / "log.jsonl"))
        read[name] = sum(r["tokens"] for r in steps)
    print(f"tokens read in 2 steps: with the earlier turns {read['chat']}, without {read['last']}")
    # The earlier turns (18 tokens of the tiny tokenizer) are read with the chosen and the
    # rejected answer of each of 8 rows a step, for 2 steps (measured: 1580 against 1004).
    assert read["chat"] - read["last"] == 2 * 8 * 2 * 18, read

    chat = scores(tiny_model, write(tmp_path / "h1.jsonl", rows[:4]), tmp_path / "e1")
    cut = scores(tiny_model, write(tmp_path / "h2.jsonl", last_turn[:4]), tmp_path / "e2")
    assert chat["pairs/logprob_margin"] != cut["pairs/logprob_margin"]
    sample = json.loads((tmp_path / "e1/samples-pairs.jsonl").read_text().splitlines()[0])
    assert sample["prompt"] == rows[0]["prompt"]
