"""The training runner on a tiny real Llama: masking, determinism, resume, health, full FT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runners.train import log as train_log
from runners.train.data import IGNORE, build_examples, collate, pack, sft_example, to_messages
from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.loop import FAULT_ENV, train

ROWS = [
    {
        "prompt": f"How do I reset password number {i}?",
        "response": f"Open Settings > Security and pick reset {i}.",
    }
    for i in range(48)
]


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    train_file = tmp_path / "train.jsonl"
    eval_file = tmp_path / "validation.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:8]))
    return {"train": train_file, "eval": eval_file}


def job(tiny_model: Path, data: dict[str, Path], out: Path, **training: Any) -> TrainJob:
    config = {
        "method": "lora",
        "max_steps": 6,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_seq_len": 64,
        "seed": 0,
        "eval_interval": 3,
        "checkpoint_interval": 2,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
    }
    config.update(training)
    return TrainJob(
        run_id="t/default",
        base_model=str(tiny_model),
        train_file=str(data["train"]),
        eval_file=str(data["eval"]),
        output=str(out),
        training=config,
    )


def losses(out: Path) -> list[float]:
    return train_log.losses(train_log.read_log(out / train_log.LOG_FILE))


def test_labels_are_masked_on_prompt_tokens(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = sft_example(tokenizer, to_messages(ROWS[0], "instruction"), 256)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": ROWS[0]["prompt"]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert example.labels[: len(prompt)] == [IGNORE] * len(prompt)
    trained = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE
    ]
    assert example.labels[len(prompt) :] == example.input_ids[len(prompt) :]
    assert tokenizer.decode(trained).startswith("Open Settings > Security")
    assert "reset" not in tokenizer.decode(example.input_ids[: len(prompt)]).split("<|user|>")[0]


def test_multi_turn_chat_trains_only_assistant_turns(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    example = sft_example(tokenizer, messages, 256)
    trained = tokenizer.decode(
        [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE]
    )
    assert "hello" in trained.replace(" ", "") and "ciao" in trained.replace(" ", "")
    assert "bye" not in trained and "hi" not in trained.replace("hello", "")


def test_packing_keeps_examples_whole_in_fewer_rows(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples = build_examples(tokenizer, ROWS, "instruction", "sft", 128)
    packed = pack(examples, 128)  # about 36 tokens each: three to a row
    assert len(packed) <= len(examples) // 3
    assert all(len(p.input_ids) <= 128 for p in packed)
    assert sum(len(p.input_ids) for p in packed) == sum(len(e.input_ids) for e in examples)
    whole = {tuple(e.input_ids) for e in examples}
    for row in packed:
        assert row.segments and sum(row.segments) == len(row.input_ids)
        start = 0
        for size in row.segments:
            assert tuple(row.input_ids[start : start + size]) in whole
            assert row.labels[start] == IGNORE  # nothing in its own example predicts it
            start += size


def test_packed_rows_give_the_loss_of_the_same_examples_padded(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = [{**r, "response": r["response"] * (1 + i % 3)} for i, r in enumerate(ROWS[:12])]
    examples = build_examples(tokenizer, rows, "instruction", "sft", 192)
    packed = pack(examples, 192)
    assert len(packed) < len(examples) and max(len(p.segments or []) for p in packed) >= 3
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        # Without a cache, as in training: transformers reads packed rows only then.
        padded_loss = model(**collate(examples, pad), use_cache=False).loss
        packed_loss = model(**collate(packed, pad), use_cache=False).loss
        # The same rows without restarting positions attend across examples: not the same.
        batch = collate(packed, pad)
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss
    assert abs(float(packed_loss - padded_loss)) < 1e-5
    assert abs(float(leaky - padded_loss)) > 1e-4  # the random tiny model barely attends


def test_examples_one_per_row_train_the_same_packed_or_not(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    longest = max(
        len(e.input_ids) for e in build_examples(tokenizer, ROWS, "instruction", "sft", 512)
    )
    assert len(
        pack(build_examples(tokenizer, ROWS, "instruction", "sft", longest), longest)
    ) == len(ROWS)
    plain = train(job(tiny_model, data, tmp_path / "plain", max_seq_len=longest))
    packed = train(job(tiny_model, data, tmp_path / "packed", max_seq_len=longest, packing=True))
    assert plain["steps"] == packed["steps"]
    assert losses(tmp_path / "packed") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4)


def test_same_spec_twice_gives_identical_losses(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    first = train(job(tiny_model, data, tmp_path / "a"))
    second = train(job(tiny_model, data, tmp_path / "b"))
    assert first["final_loss"] == second["final_loss"]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert first["final_eval_loss"] == second["final_eval_loss"]


def test_killed_run_resumes_to_the_same_final_loss(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    reference = train(job(tiny_model, data, tmp_path / "reference"))
    crashed = job(tiny_model, data, tmp_path / "crashed")
    crashed.save(tmp_path / "job.json")
    env = {**os.environ, FAULT_ENV: "5"}
    died = subprocess.run(
        [sys.executable, "-m", "runners.train", str(tmp_path / "job.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 137
    assert not (tmp_path / "crashed" / "result.json").exists()
    assert sorted(p.name for p in (tmp_path / "crashed/checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]
    resumed = subprocess.run(
        [sys.executable, "-m", "runners.train", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((tmp_path / "crashed/result.json").read_text())
    assert result["final_loss"] == reference["final_loss"]
    assert losses(tmp_path / "crashed") == losses(tmp_path / "reference")
    log = (tmp_path / "crashed/log.jsonl").read_text()
    assert '"event": "resumed", "step": 4' in log


def test_huge_learning_rate_stops_with_step_and_layer(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(UnhealthyRun) as err:
        train(job(tiny_model, data, tmp_path / "run", learning_rate=1e3))
    message = str(err.value)
    assert f"at step {err.value.step}" in message
    assert err.value.layer and err.value.layer in message
    assert "lora" in err.value.layer
    assert "learning_rate" in message


def test_cli_exit_code_and_result_for_an_unhealthy_run(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    job(tiny_model, data, tmp_path / "run", learning_rate=1e3).save(tmp_path / "job.json")
    done = subprocess.run(
        [sys.executable, "-m", "runners.train", str(tmp_path / "job.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3
    result = json.loads((tmp_path / "run/result.json").read_text())
    assert result["status"] == "unhealthy" and result["layer"]


def test_full_fine_tuning(tiny_model: Path, data: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = train(
        job(tiny_model, data, tmp_path / "full", method="full", learning_rate=1e-3, max_steps=8)
    )
    assert result["model_kind"] == "full"
    first, last = losses(tmp_path / "full")[0], result["final_loss"]
    assert last < first
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "full/model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    changed = [
        n
        for (n, a), (_, b) in zip(tuned.named_parameters(), base.named_parameters(), strict=True)
        if not (a == b).all()
    ]
    assert len(changed) > 5


def test_lora_merge_writes_full_weights(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    result = train(job(tiny_model, data, tmp_path / "m", merge=True))
    assert result["model_kind"] == "merged"
    assert (tmp_path / "m/model/config.json").is_file()
    assert not (tmp_path / "m/model/adapter_config.json").exists()
    assert (tmp_path / "m/curves.png").read_bytes().startswith(b"\x89PNG")


def test_qlora_without_gpu_is_a_clear_error(
    tiny_model: Path, data: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: QLoRA would run")
    with pytest.raises(TrainError, match="QLoRA needs a CUDA GPU"):
        train(job(tiny_model, data, tmp_path / "q", method="qlora"))


def test_early_stopping(tiny_model: Path, data: dict[str, Path], tmp_path: Path) -> None:
    result = train(
        job(
            tiny_model,
            data,
            tmp_path / "e",
            max_steps=40,
            eval_interval=1,
            learning_rate=1e-9,
            early_stopping={"patience": 2, "min_delta": 0.1},
        )
    )
    assert result["stopped_early"] and result["steps"] == 3


def test_continued_pretraining_on_text(tiny_model: Path, tmp_path: Path) -> None:
    texts = tmp_path / "text.jsonl"
    texts.write_text(
        "".join(
            json.dumps({"text": f"Orbitask keeps {i} days of history."}) + "\n" for i in range(24)
        )
    )
    result = train(
        TrainJob(
            run_id="t/cpt",
            base_model=str(tiny_model),
            train_file=str(texts),
            output=str(tmp_path / "cpt"),
            format="text",
            training={
                "objective": "cpt",
                "max_steps": 6,
                "batch_size": 4,
                "learning_rate": 3e-3,
                "max_seq_len": 32,
                "packing": True,
            },
        )
    )
    trace = losses(tmp_path / "cpt")
    assert result["steps"] == 6 and trace[-1] < trace[0]
    with pytest.raises(TrainError, match="use 'cpt' for text"):
        train(
            TrainJob(
                run_id="t/sft",
                base_model=str(tiny_model),
                train_file=str(texts),
                output=str(tmp_path / "sft"),
                format="text",
                training={"objective": "sft", "max_steps": 1},
            )
        )
