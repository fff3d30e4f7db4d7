"""Runner `train`, preference objectives: DPO, ORPO and KTO through trl's trainers, under the
same contract as the SFT loop (log.jsonl, health alarms, checkpoints, resume, result.json)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from runners.data.rows import is_messages
from runners.train.job import TrainError, TrainJob
from runners.train.log import LOG_FILE, append_record, truncate_log
from runners.train.loop import (
    FAULT_ENV,
    KEEP_CHECKPOINTS,
    Health,
    _finish,
    _memory_mb,
    _Progress,
    _seed_everything,
    load_model,
    lora_config,
)
from runners.train.options import DEFAULT_LOSS, TrainingOptions

# Dataset formats each objective trains on (kto unpairs preference rows itself).
FORMATS = {"dpo": ("preference",), "orpo": ("preference",), "kto": ("unpaired", "preference")}
FIELDS = {
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}
# Timing and token counters trl logs beside its metrics: not curves, left out of log.jsonl.
_NOISE = ("runtime", "per_second", "preparation_time", "num_tokens", "flos")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def read_preference_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of a preference or unpaired JSONL file; a bad row is a TrainError naming
    file, line and field."""
    wanted = FIELDS[fmt]
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainError(f"{where}: invalid JSON ({err.msg}, column {err.colno})") from err
        if not isinstance(row, dict):
            raise TrainError(f"{where}: a row must be a JSON object with {', '.join(wanted)}")
        problem = row_problem(row, fmt)
        if problem:
            raise TrainError(f"{where}: {problem}")
        rows.append({name: row[name] for name in wanted})
    return rows


def row_problem(row: dict[str, Any], fmt: str) -> str | None:
    """Why a row is not a valid preference or unpaired row, naming the field; or None."""
    for name in FIELDS[fmt]:
        if row.get(name) is None:
            return f"missing field '{name}' ({fmt} rows have {', '.join(FIELDS[fmt])})"
    if isinstance(row["prompt"], list) and not is_messages(row["prompt"]):
        return (
            "field 'prompt' must be a string or a non-empty list of {role, content} messages "
            "(the conversation before the answer)"
        )
    for name in ("prompt", "chosen", "rejected", "completion"):
        if name == "prompt" and isinstance(row[name], list):
            continue
        if name in FIELDS[fmt] and not isinstance(row[name], str):
            return f"field '{name}' must be a string, got {type(row[name]).__name__}"
    if fmt == "unpaired" and not isinstance(row["label"], bool):
        return (
            f"field 'label' must be true (a desirable completion) or false (undesirable), "
            f"got {row['label']!r}"
        )
    if fmt == "preference" and row["chosen"] == row["rejected"]:
        return "fields 'chosen' and 'rejected' are the same text; a pair needs two answers"
    return None


def _conversational(row: dict[str, Any]) -> dict[str, Any]:
    """trl's conversational form: the tokenizer's chat template renders it, as in SFT. A
    prompt given as messages (a chat's earlier turns) is the conversation as it was."""
    prompt = row["prompt"]
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    out: dict[str, Any] = {
        "prompt": [{"role": m["role"], "content": m["content"]} for m in messages]
    }
    for name in ("chosen", "rejected", "completion"):
        if name in row:
            out[name] = [{"role": "assistant", "content": row[name]}]
    if "label" in row:
        out["label"] = row["label"]
    return out


def unpair(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """KTO's rows: each pair as a desirable and an undesirable completion, in a seeded shuffle.

    trl's KTO reads its rows in order (its KL estimate pairs each row with its batch
    neighbours), so desirable and undesirable rows are mixed here, not left in runs."""
    out = []
    for row in rows:
        if "chosen" in row:
            out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
            out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
        else:
            out.append(row)
    order = torch.randperm(len(out), generator=torch.Generator().manual_seed(seed)).tolist()
    return [out[i] for i in order]


def _dataset(path: str | None, fmt: str, opts: TrainingOptions) -> Any:
    if not path:
        return None
    import datasets

    datasets.disable_progress_bars()
    rows = read_preference_rows(Path(path), fmt)
    if not rows:
        raise TrainError(f"{path} has no rows")
    if opts.objective == "kto":
        rows = unpair(rows, opts.seed)
    return datasets.Dataset.from_list([_conversational(r) for r in rows])


def _trainer_classes(objective: str) -> tuple[Any, Any]:
    if objective == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if objective == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def _config(job: TrainJob, opts: TrainingOptions, out: Path, evaluates: bool) -> Any:
    config_class, _ = _trainer_classes(opts.objective)
    settings = opts.preference
    loss = settings.loss_type or DEFAULT_LOSS[opts.objective]
    extra: dict[str, Any] = {"beta": settings.beta}
    if opts.objective == "dpo":
        extra.update(loss_type=[loss], label_smoothing=settings.label_smoothing)
    elif opts.objective == "kto":
        extra.update(
            loss_type=loss,
            desirable_weight=settings.desirable_weight,
            undesirable_weight=settings.undesirable_weight,
        )
    warmup: float = opts.warmup_steps or opts.warmup_ratio
    return config_class(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation,
        learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.scheduler,
        warmup_steps=warmup,
        weight_decay=opts.weight_decay,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps or -1,
        max_length=opts.max_seq_len,
        seed=opts.seed,
        data_seed=opts.seed,
        logging_steps=1,
        save_strategy="steps" if opts.checkpoint_interval else "no",
        save_steps=opts.checkpoint_interval or 500,
        save_total_limit=KEEP_CHECKPOINTS,
        eval_strategy="steps" if evaluates and opts.eval_interval else "no",
        eval_steps=opts.eval_interval,
        report_to=[],
        disable_tqdm=True,
        # The model is loaded in the run's precision, as the SFT loop trains it; no autocast.
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        max_grad_norm=0.0,  # the health callback checks, then clips to 1.0 as the SFT loop does
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        trust_remote_code=job.trust_remote_code,
        **extra,
    )


class _RunCallback:
    """trl's trainer -> the run's contract: log records, health alarms, the fault hook."""

    def __init__(self, opts: TrainingOptions, log: Any, per_epoch: int) -> None:
        self.health = Health(opts.health)
        self.log = log
        self.per_epoch = per_epoch
        self.accumulation = opts.gradient_accumulation
        self.fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
        self.checkpoint_interval = opts.checkpoint_interval
        self.grad_norm = 0.0
        self.began = time.perf_counter()
        self.step_s = 0.0  # the last optimisation step: forward, backward, health, update
        self.tokens_seen = 0  # trl's running count of the tokens trained on (dpo, kto)
        self.last_loss = float("nan")
        self.evaluated = -1

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer.began = time.perf_counter()

            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                model = kw["model"]
                outer.grad_norm = outer.health.gradients(state.global_step + 1, model)
                params = [p for p in model.parameters() if p.requires_grad]
                torch.nn.utils.clip_grad_norm_(params, 1.0)

            def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer.health.weights(state.global_step + 1, kw["model"])

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                outer.step_s = time.perf_counter() - outer.began

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
                outer.record(state.global_step, logs or {})

            def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if outer.fault_step and state.global_step == outer.fault_step:
                    os._exit(137)

        return Callback()

    def record(self, step: int, logs: dict[str, Any]) -> None:
        numbers = {
            k: float(v)
            for k, v in logs.items()
            if isinstance(v, int | float) and not any(n in k for n in _NOISE)
        }
        if "loss" in numbers:
            self.health.loss(step, numbers["loss"])
            self.last_loss = numbers["loss"]
            record: dict[str, Any] = {
                "step": step,
                "epoch": round(step * self.accumulation / self.per_epoch, 4),
                "loss": numbers.pop("loss"),
                "lr": numbers.pop("learning_rate", 0.0),
                "grad_norm": self.grad_norm,
                "step_s": round(self.step_s, 4),
                "memory_mb": round(_memory_mb(), 1),
            }
            seen = logs.get("num_tokens")  # cumulative, from 0 in this process (orpo: none)
            if isinstance(seen, int | float) and seen >= self.tokens_seen:
                tokens = int(seen) - self.tokens_seen
                self.tokens_seen = int(seen)
                record["tokens"] = tokens
                record["tokens_per_s"] = tokens / self.step_s if self.step_s else 0.0
            numbers.pop("grad_norm", None)
            numbers.pop("epoch", None)
            record.update(numbers)
            append_record(self.log, record)
            saves = self.checkpoint_interval and step % self.checkpoint_interval == 0
            if self.fault_step and step == self.fault_step and not saves:
                os._exit(137)
        elif "eval_loss" in numbers and step != self.evaluated:
            self.evaluated = step  # the final evaluation repeats the last step's
            numbers.pop("epoch", None)
            append_record(self.log, {"step": step, **numbers})


def _latest_checkpoint(folder: Path) -> Path | None:
    """The newest whole checkpoint: trainer_state.json is the last file HF writes."""
    found = [
        (int(match.group(1)), path)
        for path in folder.glob("checkpoint-*")
        if (match := _CHECKPOINT.match(path.name)) and (path / "trainer_state.json").is_file()
    ]
    return max(found)[1] if found else None


def _check_format(job: TrainJob, opts: TrainingOptions) -> None:
    allowed = FORMATS[opts.objective]
    if job.format not in allowed:
        raise TrainError(
            f"objective '{opts.objective}' trains on {' or '.join(allowed)} rows, but the "
            f"dataset's format is '{job.format}'; use a {allowed[0]} Dataset"
        )
    if opts.objective == "kto" and opts.batch_size < 2:
        raise TrainError(
            "objective 'kto' estimates its KL term from the other rows of a batch; set "
            "training.batch_size to 2 or more"
        )
    if opts.method == "qlora":
        raise TrainError(
            f"objective '{opts.objective}' trains with method 'lora' or 'full'; QLoRA is "
            "available for sft and cpt"
        )


def train_preference(job: TrainJob, opts: TrainingOptions) -> dict[str, Any]:
    """Run (or resume) a DPO, ORPO or KTO job; returns the record also written to result.json."""
    _check_format(job, opts)
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    _seed_everything(opts.seed)
    train_set = _dataset(job.train_file, job.format, opts)
    eval_set = _dataset(job.eval_file, job.format, opts)
    model, tokenizer = load_model(job, opts)
    _, trainer_class = _trainer_classes(opts.objective)
    reference = None
    if opts.objective != "orpo" and not opts.adapts:
        # Full fine-tuning: the reference is a frozen copy of the starting model. (LoRA: trl
        # disables the adapter for the reference pass; ORPO needs no reference.)
        reference, _ = load_model(job, opts)
        reference.eval().requires_grad_(False)
    per_epoch = -(-len(train_set) // opts.batch_size)
    log_path = out / LOG_FILE
    latest = _latest_checkpoint(out / "checkpoints") if opts.resume else None
    if latest is None and log_path.exists():
        log_path.unlink()
    with log_path.open("a") as log:
        run = _RunCallback(opts, log, per_epoch)
        kwargs: dict[str, Any] = {
            "model": model,
            "args": _config(job, opts, out, eval_set is not None),
            "train_dataset": train_set,
            "eval_dataset": eval_set,
            "processing_class": tokenizer,
            "callbacks": [run.callback()],
            "peft_config": lora_config(opts) if opts.adapts else None,
        }
        if opts.objective != "orpo":
            kwargs["ref_model"] = reference
        try:
            trainer = trainer_class(**kwargs)
        except ValueError as err:
            raise TrainError(f"trl cannot set up {opts.objective} training: {err}") from err
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        # stdout carries the runner's result line only; log.jsonl has every step.
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if latest is not None:
            step = int(_CHECKPOINT.match(latest.name).group(1))  # type: ignore[union-attr]
            truncate_log(log_path, step)
            append_record(log, {"event": "resumed", "step": step})
        elif eval_set is not None and opts.eval_interval:
            trainer.evaluate()  # the untrained model's eval: the curve starts at step 0
        trainer.train(resume_from_checkpoint=str(latest) if latest else None)
        final_eval = trainer.evaluate()["eval_loss"] if eval_set is not None else None
    progress = _Progress(trainer.state.global_step, run.last_loss, False)
    result = _finish(
        job,
        opts,
        trainer.model,
        tokenizer,
        out,
        progress,
        trainer.state.max_steps,
        final_eval,
        len(train_set),
    )
    result["objective"] = opts.objective
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
