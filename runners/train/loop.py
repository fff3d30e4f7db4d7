"""Runner `train`, the loop: optimiser, schedule, accumulation, eval, checkpoints, health."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import torch

from runners.pull.fetch import cast_weights
from runners.pull.metadata import count_parameters
from runners.train.curves import plot_run
from runners.train.data import (
    IGNORE,
    Example,
    build_examples,
    collate,
    micro_batches,
    pack,
    read_rows,
    real_tokens,
)
from runners.train.distributed import (
    SINGLE,
    World,
    gradient_sync,
    join,
    leave,
    load_optimizer,
    load_trainable,
    optimizer_state,
    trainable_state,
    whole,
    wrap,
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
    """This process's device: its rank's GPU under torchrun (LOCAL_RANK), else the first."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


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
            norm = float(whole(param.grad.detach()).float().norm())
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
            top = float(whole(param.detach()).abs().max())
            if not math.isfinite(top) or top > self.max_weight:
                raise UnhealthyRun(
                    f"exploding weights at step {step} in layer {name}: max |w| "
                    f"= {top:.3g} > {self.max_weight:g}; lower "
                    "training.learning_rate",
                    step,
                    name,
                )


def _save_checkpoint(
    folder: Path,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    world: World = SINGLE,
) -> None:
    """Write to a temporary folder and rename: a crash never leaves half a checkpoint. The
    weights and optimiser state are whole (gathered from the shards under fsdp, every rank
    taking part); rank 0 writes them."""
    trainable = trainable_state(model, world)
    optimizer_saved = optimizer_state(model, optimizer, world)
    if not world.main:
        return
    final = folder / f"step-{step:08d}"
    tmp = folder / f".step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(
        {
            "optimizer": optimizer_saved,
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


def _evaluate(
    model: Any, examples: list[Example], batch_size: int, pad_id: int, world: World = SINGLE
) -> float:
    """Mean eval loss per label token; the ranks each take a share and sum their parts."""
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            # Every rank runs every batch (fsdp's forward is collective), on its share.
            batch = collate(_share(examples[i : i + batch_size], world), pad_id)
            batch = {k: v.to(_device()) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**batch, use_cache=False).loss
            if n:
                total += float(loss) * n
                tokens += n
    model.train()
    total, tokens = world.sum([total, float(tokens)]) if world.distributed else (total, tokens)
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
    out: Path,
    opts: TrainingOptions,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    world: World = SINGLE,
) -> tuple[int, dict[str, Any]]:
    """Load the last checkpoint when there is one: (the step it reached, its state). Every
    rank loads the same one, whatever world size wrote it (the optimiser state is whole)."""
    latest = _latest_checkpoint(out / "checkpoints") if opts.resume else None
    log_path = out / LOG_FILE
    if latest is None:
        if log_path.exists() and world.main:
            log_path.unlink()
        return 0, {"best_eval": None, "evals_without_improvement": 0}
    trainable = torch.load(latest / "trainable.pt", weights_only=True)
    load_trainable(model, trainable, world)
    saved = torch.load(latest / "optimizer.pt", weights_only=True)
    load_optimizer(model, optimizer, saved["optimizer"], world)
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    random.setstate(saved["python_rng"])
    state = json.loads((latest / "state.json").read_text())
    start_step = int(state["step"])
    if world.main:
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
    # torchrun's ranks (runners/train/distributed.py); one process otherwise.
    world = join(opts.distributed.strategy)
    try:
        return _train(job, opts, out, world)
    finally:
        leave(world)


def _train(job: TrainJob, opts: TrainingOptions, out: Path, world: World) -> dict[str, Any]:
    if world.distributed and opts.batch_size % world.size:
        raise TrainError(
            f"training.batch_size ({opts.batch_size}) is split across {world.size} "
            f"processes; make it a multiple of {world.size}"
        )
    _seed_everything(opts.seed)
    model, tokenizer = _setup_model(job, opts)
    train_examples, eval_examples = _setup_data(job, opts, tokenizer)
    schedule = _schedule(opts, len(train_examples))
    stepper = wrap(model, world)  # before the optimiser: fsdp replaces the parameters
    params, optimizer, scheduler = _setup_optimizer(model, opts, schedule)
    start_step, state = _resume(out, opts, model, optimizer, scheduler, world)
    progress = _train_steps(
        opts,
        out,
        schedule,
        (model, params, optimizer, scheduler, stepper),
        (train_examples, eval_examples, tokenizer.pad_token_id),
        start_step,
        state,
        world,
    )
    final_eval = (
        _evaluate(model, eval_examples, opts.batch_size, tokenizer.pad_token_id, world)
        if eval_examples
        else None
    )
    if world.sharded:  # rank 0 saves an unsharded copy holding the whole trained weights
        trainable = trainable_state(model, world)
        if world.main:
            model, _ = _setup_model(job, opts)
            model.load_state_dict(trainable, strict=False)
    if not world.main:  # rank 0 alone writes the model and result.json
        return {"status": "succeeded", "run_id": job.run_id, "rank": world.rank}
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


def _accumulate(
    model: Any,
    stepper: Any,
    batches: Iterator[tuple[int, list[Example]]],
    accumulation: int,
    pad_id: int,
    world: World,
) -> tuple[float, int]:
    """Run one step's micro-batches forward and backward: the step's loss and real tokens."""
    loss_sum, tokens = 0.0, 0
    for micro in range(accumulation):
        _, examples = next(batches)
        if world.distributed:
            # Gradients are averaged over the ranks once, after the last micro-batch.
            with gradient_sync(stepper, world, micro == accumulation - 1):
                loss_sum += _shard_step(stepper, examples, pad_id, world) / accumulation
        else:
            batch = {k: v.to(_device()) for k, v in collate(examples, pad_id).items()}
            loss = model(**batch, use_cache=False).loss / accumulation
            loss.backward()
            loss_sum += loss.detach().item()
        tokens += real_tokens(examples)
    if world.distributed:
        (loss_sum,) = world.sum([loss_sum])  # the global batch's loss, as one process
    return loss_sum, tokens


def _optimizer_step(
    health: Health, step: int, loss_sum: float, training: tuple[Any, list[Any], Any, Any, Any]
) -> Any:
    """Check the loss and gradients, clip, step the optimizer and scheduler: the grad norm."""
    model, params, optimizer, scheduler, _ = training
    health.loss(step, loss_sum)
    grad_norm = health.gradients(step, model)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    health.weights(step, model)
    return grad_norm


def _die(world: World) -> NoReturn:
    """The injected fault: this process dies as the OOM killer would end it."""
    if world.distributed:
        os.kill(os.getpid(), signal.SIGKILL)  # one rank killed, as the OOM killer would
    os._exit(137)


def _train_steps(
    opts: TrainingOptions,
    out: Path,
    schedule: _Schedule,
    training: tuple[Any, list[Any], Any, Any, Any],
    data: tuple[list[Example], list[Example], int],
    start_step: int,
    state: dict[str, Any],
    world: World = SINGLE,
) -> _Progress:
    model, _, optimizer, scheduler, stepper = training
    train_examples, eval_examples, pad_id = data
    accumulation = opts.gradient_accumulation
    health = Health(opts.health)
    early = opts.early_stopping
    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    batches = micro_batches(train_examples, opts.batch_size, opts.seed, start_step * accumulation)
    model.train()
    step, last_loss, stopped_early = start_step, float("nan"), False
    # Rank 0 alone writes the log; the other ranks' records go nowhere.
    with (out / LOG_FILE if world.main else Path(os.devnull)).open("a") as log:
        if start_step:
            append_record(log, {"event": "resumed", "step": start_step})
        elif eval_examples and opts.eval_interval:
            # The untrained model's eval loss: the curve starts where training starts.
            initial = _evaluate(model, eval_examples, opts.batch_size, pad_id, world)
            append_record(log, {"step": 0, "eval_loss": initial})
        for step in range(start_step + 1, schedule.total_steps + 1):
            began = time.perf_counter()
            loss_sum, tokens = _accumulate(model, stepper, batches, accumulation, pad_id, world)
            grad_norm = _optimizer_step(health, step, loss_sum, training)
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
                record["eval_loss"] = _evaluate(
                    model, eval_examples, opts.batch_size, pad_id, world
                )
                _track_best(state, record["eval_loss"], early)
            append_record(log, record)
            if opts.checkpoint_interval and step % opts.checkpoint_interval == 0:
                _save_checkpoint(
                    out / "checkpoints", step, model, optimizer, scheduler, state, world
                )
                world.barrier()  # no rank moves on before the checkpoint is whole
            if fault_step and step == fault_step and world.killed_here():
                _die(world)
            if early and state["evals_without_improvement"] >= early.patience:
                stopped_early = True
                append_record(log, {"event": "early_stop", "step": step})
                break
    return _Progress(step, last_loss, stopped_early)


def _share(examples: list[Example], world: World) -> list[Example]:
    """This rank's share of a global batch; with fewer examples than ranks (an epoch's last
    batch), a rank that gets none runs one with no labels, so every rank takes each step."""
    mine = world.shard(examples)
    return mine or [Example(examples[0].input_ids, [IGNORE] * len(examples[0].labels))]


def _shard_step(stepper: Any, examples: list[Example], pad_id: int, world: World) -> float:
    """Forward and backward of this rank's share of a global micro-batch; returns its part of
    the batch's loss. The part is its label tokens' summed loss over the whole batch's count,
    so the parts add up to the loss one process computes for the batch (the mean over the
    batch's label tokens), and world x part makes DDP's averaged gradient the whole batch's."""
    mine = _share(examples, world)
    count = sum(1 for e in examples for label in e.labels[1:] if label != IGNORE)
    batch = {k: v.to(_device()) for k, v in collate(mine, pad_id).items()}
    labels = batch.pop("labels")
    logits = stepper(**batch, use_cache=False).logits.float()
    summed = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    part = summed / max(count, 1)
    (part * world.size).backward()
    return float(part.detach())


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
