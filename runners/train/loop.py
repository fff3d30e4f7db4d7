"""Runner `train`, the loop: optimiser, schedule, accumulation, eval, checkpoints, health."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from runners.train.data import (
    Example,
    build_examples,
    collate,
    micro_batches,
    pack,
    read_rows,
    real_tokens,
)
from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.log import LOG_FILE, append_record, truncate_log
from runners.weights import SAFE_MODEL, SAFE_TOKENIZER

FAULT_ENV = "LLMOPS_FAULT_EXIT_AFTER_STEP"  # fault injection: hard exit, as a kill would
KEEP_CHECKPOINTS = 2


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is optional for the loop
        pass


def _memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        return 0.0


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(job: TrainJob) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    method = job.option("method", "lora")
    precision = job.option("precision", "fp32")
    if method == "qlora" and not torch.cuda.is_available():
        raise TrainError(
            "QLoRA needs a CUDA GPU (4-bit weights via bitsandbytes); this "
            "machine has none. Use method 'lora' here"
        )
    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("fp16 training needs a GPU; use precision 'fp32' or 'bf16' on a CPU")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    tokenizer = AutoTokenizer.from_pretrained(job.base_model, **SAFE_TOKENIZER)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": dtype, **SAFE_MODEL}
    kwargs["trust_remote_code"] = job.trust_remote_code
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(job.base_model, **kwargs)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lora = job.option("lora", {})
        config = LoraConfig(
            r=lora.get("r", 8),
            lora_alpha=lora.get("alpha", 16),
            lora_dropout=lora.get("dropout", 0.05),
            target_modules=lora.get("target_modules", ["q_proj", "v_proj"]),
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as err:
            raise TrainError(
                f"LoRA cannot attach to this model: {err}; check training.lora.target_modules"
            ) from err
    return model.to(_device()), tokenizer


def _examples(job: TrainJob, tokenizer: Any, path: str | None) -> list[Example]:
    if not path:
        return []
    max_len = int(job.option("max_seq_len", 256))
    try:
        examples = build_examples(
            tokenizer, read_rows(Path(path)), job.format, job.option("objective", "sft"), max_len
        )
    except (ValueError, KeyError) as err:
        raise TrainError(f"cannot build training examples from {path}: {err}") from err
    return pack(examples, max_len) if job.option("packing", False) else examples


class Health:
    """Stops the run on NaN/inf loss, loss spikes, exploding gradients or weights."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.max_grad = float(cfg.get("max_grad_norm", 1e3))
        self.max_weight = float(cfg.get("max_weight_abs", 1e3))
        self.spike = float(cfg.get("loss_spike_factor", 10.0))
        self.recent: deque[float] = deque(maxlen=20)

    def loss(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise UnhealthyRun(
                f"loss is {loss} at step {step}: training diverged; lower training.learning_rate",
                step,
                None,
            )
        if len(self.recent) >= 5:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike * mean:
                raise UnhealthyRun(
                    f"loss spiked to {loss:.4g} at step {step} (running mean "
                    f"{mean:.4g}); lower training.learning_rate",
                    step,
                    None,
                )
        self.recent.append(loss)

    def gradients(self, step: int, model: Any) -> float:
        worst_name, worst = None, 0.0
        total_sq = 0.0
        for name, param in model.named_parameters():
            if param.grad is None:
                continue
            norm = float(param.grad.detach().float().norm())
            if not math.isfinite(norm):
                raise UnhealthyRun(
                    f"gradient is {norm} at step {step} in layer {name}; lower "
                    "training.learning_rate",
                    step,
                    name,
                )
            total_sq += norm * norm
            if norm > worst:
                worst_name, worst = name, norm
        total = math.sqrt(total_sq)
        if total > self.max_grad:
            raise UnhealthyRun(
                f"exploding gradients at step {step}: norm {total:.3g} > "
                f"{self.max_grad:g}, largest in layer {worst_name} "
                f"({worst:.3g}); lower training.learning_rate",
                step,
                worst_name,
            )
        return total

    def weights(self, step: int, model: Any) -> None:
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            top = float(param.detach().abs().max())
            if not math.isfinite(top) or top > self.max_weight:
                raise UnhealthyRun(
                    f"exploding weights at step {step} in layer {name}: max |w| "
                    f"= {top:.3g} > {self.max_weight:g}; lower "
                    "training.learning_rate",
                    step,
                    name,
                )


def _save_checkpoint(
    folder: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> None:
    """Write to a temporary folder and rename: a crash never leaves half a checkpoint."""
    final = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        },
        tmp / "optimizer.pt",
    )
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())
    return found[-1] if found else None


def _evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int) -> float:
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size], pad_id)
            batch = {k: v.to(_device()) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch, use_cache=False).loss) * n
            tokens += n
    model.train()
    return total / max(tokens, 1)


def train(job: TrainJob) -> dict[str, Any]:
    """Run (or resume) the job; returns the result record also written to result.json."""
    from transformers import get_scheduler

    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(job.option("seed", 0))
    _seed_everything(seed)
    model, tokenizer = load_model(job)
    train_examples = _examples(job, tokenizer, job.train_file)
    eval_examples = _examples(job, tokenizer, job.eval_file)
    if not train_examples:
        raise TrainError(f"{job.train_file} has no trainable examples")
    batch_size = int(job.option("batch_size", 8))
    accumulation = int(job.option("gradient_accumulation", 1))
    per_epoch = math.ceil(len(train_examples) / batch_size)
    max_steps = job.option("max_steps")
    total_steps = (
        int(max_steps)
        if max_steps
        else max(1, math.ceil(float(job.option("epochs", 1.0)) * per_epoch / accumulation))
    )
    warmup = int(job.option("warmup_steps", 0)) or math.ceil(
        float(job.option("warmup_ratio", 0.0)) * total_steps
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=float(job.option("learning_rate", 2e-4)),
        weight_decay=float(job.option("weight_decay", 0.0)),
    )
    scheduler = get_scheduler(
        job.option("scheduler", "linear"),
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
    checkpoints = out / "checkpoints"
    start_step, state = 0, {"best_eval": None, "evals_without_improvement": 0}
    latest = _latest_checkpoint(checkpoints) if job.option("resume", True) else None
    log_path = out / LOG_FILE
    if latest is not None:
        trainable = torch.load(latest / "trainable.pt", weights_only=True)
        model.load_state_dict(trainable, strict=False)
        saved = torch.load(latest / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        random.setstate(saved["python_rng"])
        state = json.loads((latest / "state.json").read_text())
        start_step = int(state["step"])
        truncate_log(log_path, start_step)
    elif log_path.exists():
        log_path.unlink()

    health = Health(job.option("health", {}))
    eval_interval = job.option("eval_interval")
    checkpoint_interval = job.option("checkpoint_interval")
    early = job.option("early_stopping")
    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    pad_id = tokenizer.pad_token_id
    batches = micro_batches(train_examples, batch_size, seed, start_step * accumulation)
    model.train()
    stopped_early = False
    last_loss = float("nan")
    with log_path.open("a") as log:
        if start_step:
            append_record(log, {"event": "resumed", "step": start_step})
        elif eval_examples and eval_interval:
            # The untrained model's eval loss: the curve starts where training starts.
            initial = _evaluate(model, eval_examples, batch_size, pad_id)
            append_record(log, {"step": 0, "eval_loss": initial})
        for step in range(start_step + 1, total_steps + 1):
            began = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            for _ in range(accumulation):
                _, examples = next(batches)
                batch = {k: v.to(_device()) for k, v in collate(examples, pad_id).items()}
                loss = model(**batch, use_cache=False).loss / accumulation
                loss.backward()
                loss_sum += loss.detach().item()
                tokens += real_tokens(examples)
            health.loss(step, loss_sum)
            grad_norm = health.gradients(step, model)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            health.weights(step, model)
            elapsed = time.perf_counter() - began
            last_loss = loss_sum
            record = {
                "step": step,
                "epoch": round(step * accumulation / per_epoch, 4),
                "loss": loss_sum,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_s": tokens / elapsed if elapsed else 0.0,
                "memory_mb": round(_memory_mb(), 1),
            }
            if eval_examples and eval_interval and step % int(eval_interval) == 0:
                record["eval_loss"] = _evaluate(model, eval_examples, batch_size, pad_id)
                best = state.get("best_eval")
                delta = float((early or {}).get("min_delta", 0.0))
                if best is None or record["eval_loss"] < best - delta:
                    state["best_eval"], state["evals_without_improvement"] = (
                        record["eval_loss"],
                        0,
                    )
                else:
                    state["evals_without_improvement"] += 1
            append_record(log, record)
            if checkpoint_interval and step % int(checkpoint_interval) == 0:
                _save_checkpoint(checkpoints, step, model, optimizer, scheduler, state)
            if fault_step and step == fault_step:
                os._exit(137)
            if early and state["evals_without_improvement"] >= int(early.get("patience", 3)):
                stopped_early = True
                append_record(log, {"event": "early_stop", "step": step})
                break
    final_eval = _evaluate(model, eval_examples, batch_size, pad_id) if eval_examples else None
    return _finish(
        job,
        model,
        tokenizer,
        out,
        step,
        total_steps,
        last_loss,
        final_eval,
        stopped_early,
        len(train_examples),
    )


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _finish(
    job: TrainJob,
    model: Any,
    tokenizer: Any,
    out: Path,
    step: int,
    total: int,
    last_loss: float,
    final_eval: float | None,
    stopped_early: bool,
    examples: int,
) -> dict[str, Any]:
    from runners.train.curves import plot_run

    model_dir = out / "model"
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    method = job.option("method", "lora")
    if method in ("lora", "qlora") and job.option("merge", False):
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        model_kind = "merged"
    else:
        model.save_pretrained(tmp, safe_serialization=True)
        model_kind = "adapter" if method in ("lora", "qlora") else "full"
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    plot_run(out / LOG_FILE, out / "curves.png", job.run_id)
    result = {
        "status": "succeeded",
        "run_id": job.run_id,
        "steps": step,
        "planned_steps": total,
        "final_loss": last_loss,
        "final_eval_loss": final_eval,
        "stopped_early": stopped_early,
        "examples": examples,
        "model_kind": model_kind,
        "seed": int(job.option("seed", 0)),
        "packages": _package_versions(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
