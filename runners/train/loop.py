"""Runner `train`, the loop: optimiser, schedule, accumulation, eval, checkpoints, health."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import deque
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from runners.train.curves import plot_run
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
from runners.train.options import (
    EarlyStoppingOptions,
    HealthOptions,
    TrainingOptions,
)
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


def _setup_model(job: TrainJob, opts: TrainingOptions) -> tuple[Any, Any]:
    model, tokenizer = load_model(job, opts)
    if opts.adapts:
        from peft import get_peft_model

        try:
            model = get_peft_model(model, lora_config(opts))
        except ValueError as err:
            raise TrainError(
                f"LoRA cannot attach to this model: {err}; check training.lora.target_modules"
            ) from err
    return model.to(_device()), tokenizer


def lora_config(opts: TrainingOptions) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=opts.lora.r,
        lora_alpha=opts.lora.alpha,
        lora_dropout=opts.lora.dropout,
        target_modules=list(opts.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def load_model(job: TrainJob, opts: TrainingOptions) -> tuple[Any, Any]:
    """The base model in the run's precision (4-bit for QLoRA) and its tokenizer, no adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if opts.method == "qlora" and not torch.cuda.is_available():
        raise TrainError(
            "QLoRA needs a CUDA GPU (4-bit weights via bitsandbytes); this "
            "machine has none. Use method 'lora' here"
        )
    if opts.precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("fp16 training needs a GPU; use precision 'fp32' or 'bf16' on a CPU")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[opts.precision]
    tokenizer = AutoTokenizer.from_pretrained(job.base_model, **SAFE_TOKENIZER)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"dtype": dtype, **SAFE_MODEL}
    kwargs["trust_remote_code"] = job.trust_remote_code
    if opts.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return AutoModelForCausalLM.from_pretrained(job.base_model, **kwargs), tokenizer


def _examples(
    job: TrainJob, opts: TrainingOptions, tokenizer: Any, path: str | None
) -> list[Example]:
    if not path:
        return []
    try:
        examples = build_examples(
            tokenizer, read_rows(Path(path)), job.format, opts.objective, opts.max_seq_len
        )
    except (ValueError, KeyError) as err:
        raise TrainError(f"cannot build training examples from {path}: {err}") from err
    return pack(examples, opts.max_seq_len) if opts.packing else examples


def _setup_data(
    job: TrainJob, opts: TrainingOptions, tokenizer: Any
) -> tuple[list[Example], list[Example]]:
    train_examples = _examples(job, opts, tokenizer, job.train_file)
    if not train_examples:
        raise TrainError(f"{job.train_file} has no trainable examples")
    return train_examples, _examples(job, opts, tokenizer, job.eval_file)


class Health:
    """Stops the run on NaN/inf loss, loss spikes, exploding gradients or weights."""

    def __init__(self, options: HealthOptions) -> None:
        self.max_grad = options.max_grad_norm
        self.max_weight = options.max_weight_abs
        self.spike = options.loss_spike_factor
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


@dataclass(frozen=True)
class _Schedule:
    """How many optimiser steps the run takes, derived from the data and the options."""

    per_epoch: int  # micro-batches in one pass over the data
    total_steps: int
    warmup_steps: int


def _schedule(opts: TrainingOptions, examples: int) -> _Schedule:
    per_epoch = math.ceil(examples / opts.batch_size)
    total = opts.max_steps or max(
        1, math.ceil(opts.epochs * per_epoch / opts.gradient_accumulation)
    )
    warmup = opts.warmup_steps or math.ceil(opts.warmup_ratio * total)
    return _Schedule(per_epoch, total, warmup)


def _setup_optimizer(
    model: Any, opts: TrainingOptions, schedule: _Schedule
) -> tuple[list[Any], Any, Any]:
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
    scheduler = get_scheduler(
        opts.scheduler,
        optimizer,
        num_warmup_steps=schedule.warmup_steps,
        num_training_steps=schedule.total_steps,
    )
    return params, optimizer, scheduler


def _resume(
    out: Path, opts: TrainingOptions, model: Any, optimizer: Any, scheduler: Any
) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint when there is one: (the step it reached, its state)."""
    latest = _latest_checkpoint(out / "checkpoints") if opts.resume else None
    log_path = out / LOG_FILE
    if latest is None:
        if log_path.exists():
            log_path.unlink()
        return 0, {"best_eval": None, "evals_without_improvement": 0}
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
    return start_step, state


def train(job: TrainJob) -> dict[str, Any]:
    """Run (or resume) the job; returns the result record also written to result.json."""
    opts = TrainingOptions.from_mapping(job.training)
    if opts.prefers:
        from runners.train.preference import train_preference  # trl: only for these runs

        return train_preference(job, opts)
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(opts.seed)
    model, tokenizer = _setup_model(job, opts)
    train_examples, eval_examples = _setup_data(job, opts, tokenizer)
    schedule = _schedule(opts, len(train_examples))
    params, optimizer, scheduler = _setup_optimizer(model, opts, schedule)
    start_step, state = _resume(out, opts, model, optimizer, scheduler)
    progress = _train_steps(
        opts,
        out,
        schedule,
        (model, params, optimizer, scheduler),
        (train_examples, eval_examples, tokenizer.pad_token_id),
        start_step,
        state,
    )
    final_eval = (
        _evaluate(model, eval_examples, opts.batch_size, tokenizer.pad_token_id)
        if eval_examples
        else None
    )
    return _finish(
        job,
        opts,
        model,
        tokenizer,
        out,
        progress,
        schedule.total_steps,
        final_eval,
        len(train_examples),
    )


@dataclass(frozen=True)
class _Progress:
    """Where the step loop stopped."""

    step: int
    last_loss: float
    stopped_early: bool


def _train_steps(
    opts: TrainingOptions,
    out: Path,
    schedule: _Schedule,
    training: tuple[Any, list[Any], Any, Any],
    data: tuple[list[Example], list[Example], int],
    start_step: int,
    state: dict[str, Any],
) -> _Progress:
    model, params, optimizer, scheduler = training
    train_examples, eval_examples, pad_id = data
    accumulation = opts.gradient_accumulation
    health = Health(opts.health)
    early = opts.early_stopping
    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    batches = micro_batches(train_examples, opts.batch_size, opts.seed, start_step * accumulation)
    model.train()
    step, last_loss, stopped_early = start_step, float("nan"), False
    with (out / LOG_FILE).open("a") as log:
        if start_step:
            append_record(log, {"event": "resumed", "step": start_step})
        elif eval_examples and opts.eval_interval:
            # The untrained model's eval loss: the curve starts where training starts.
            initial = _evaluate(model, eval_examples, opts.batch_size, pad_id)
            append_record(log, {"step": 0, "eval_loss": initial})
        for step in range(start_step + 1, schedule.total_steps + 1):
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
                "epoch": round(step * accumulation / schedule.per_epoch, 4),
                "loss": loss_sum,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens": tokens,
                "tokens_per_s": tokens / elapsed if elapsed else 0.0,
                "memory_mb": round(_memory_mb(), 1),
            }
            if eval_examples and opts.eval_interval and step % opts.eval_interval == 0:
                record["eval_loss"] = _evaluate(model, eval_examples, opts.batch_size, pad_id)
                _track_best(state, record["eval_loss"], early)
            append_record(log, record)
            if opts.checkpoint_interval and step % opts.checkpoint_interval == 0:
                _save_checkpoint(out / "checkpoints", step, model, optimizer, scheduler, state)
            if fault_step and step == fault_step:
                os._exit(137)
            if early and state["evals_without_improvement"] >= early.patience:
                stopped_early = True
                append_record(log, {"event": "early_stop", "step": step})
                break
    return _Progress(step, last_loss, stopped_early)


def _track_best(
    state: dict[str, Any], eval_loss: float, early: EarlyStoppingOptions | None
) -> None:
    best = state.get("best_eval")
    delta = early.min_delta if early else 0.0
    if best is None or eval_loss < best - delta:
        state["best_eval"], state["evals_without_improvement"] = eval_loss, 0
    else:
        state["evals_without_improvement"] += 1


def _package_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "peft", "accelerate", "tokenizers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def save_dtype(job: TrainJob, opts: TrainingOptions) -> str | None:
    """The dtype the trained weights are stored in: training.save_dtype, or for `auto` the
    base model's own (most of its parameters decide); None keeps what training computed in."""
    if opts.save_dtype != "auto":
        return opts.save_dtype
    from runners.pull.metadata import count_parameters

    _, base = count_parameters(Path(job.base_model))
    return base if base in ("float32", "bfloat16", "float16") else None


def _finish(
    job: TrainJob,
    opts: TrainingOptions,
    model: Any,
    tokenizer: Any,
    out: Path,
    progress: _Progress,
    total: int,
    final_eval: float | None,
    examples: int,
) -> dict[str, Any]:
    model_dir = out / "model"
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if opts.adapts and opts.merge:
        merged = model.merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
        model_kind = "merged"
    else:
        model.save_pretrained(tmp, safe_serialization=True)
        model_kind = "adapter" if opts.adapts else "full"
    tokenizer.save_pretrained(tmp)
    stored_dtype = save_dtype(job, opts)
    if stored_dtype is not None:
        from runners.pull.fetch import cast_weights

        cast_weights(tmp, stored_dtype)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    plot_run(out / LOG_FILE, out / "curves.png", job.run_id)
    result = {
        "status": "succeeded",
        "run_id": job.run_id,
        "steps": progress.step,
        "planned_steps": total,
        "final_loss": progress.last_loss,
        "final_eval_loss": final_eval,
        "stopped_early": progress.stopped_early,
        "examples": examples,
        "model_kind": model_kind,
        "seed": opts.seed,
        "packages": _package_versions(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
