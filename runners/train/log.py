"""Runner `train`, log: the one writer and reader of a run's log.jsonl, and what it records.

One JSON object per line, appended and flushed by the loop while it trains:
- a training step: `step`, `epoch`, `loss`, `lr`, `grad_norm`, `tokens`, `tokens_per_s`,
  `memory_mb`, and `eval_loss` on evaluation steps;
- the untrained model's evaluation: `{"step": 0, "eval_loss": ...}`;
- an event: `{"event": "resumed" | "early_stop", "step": ...}`.

Readers (the controller's progress bar, curves, the CLI and the pull-request report) may
read while the run writes, or after it was killed mid-write, so a last line that is not yet
a whole record is left out. A bad line anywhere else is an error naming file and line.
Imports nothing heavy: the controller reads logs without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

LOG_FILE = "log.jsonl"  # in the run folder (TrainJob.output)

Record = dict[str, Any]


class LogError(ValueError):
    """A line of log.jsonl other than the last is not a JSON object."""


def append_record(handle: IO[str], record: Record) -> None:
    """Write one record as one line and flush, so readers see whole lines as they come."""
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def read_log(path: Path) -> list[Record]:
    """Every record of the log in order; [] when there is no log (yet).

    A last line that does not parse (the run was writing it, or was killed while it did) is
    left out; any other line that is not a JSON object raises LogError with file:line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    last = max((n for n, line in enumerate(lines, start=1) if line.strip()), default=0)
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            if number == last:
                break
            raise LogError(f"{path}:{number}: not a JSON record: {err}") from err
        if not isinstance(record, dict):
            raise LogError(f"{path}:{number}: a record must be a JSON object")
        records.append(record)
    return records


def truncate_log(path: Path, step: int) -> None:
    """Keep only records up to `step`: a resumed run continues from that checkpoint."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def is_training_step(record: Record) -> bool:
    """A record of one optimiser step: it has `loss` and `step` and is not an event."""
    return "loss" in record and "step" in record and "event" not in record


def training_steps(records: Iterable[Record]) -> list[Record]:
    """The training-step records, in order."""
    return [r for r in records if is_training_step(r)]


def losses(records: Iterable[Record]) -> list[float]:
    """The training loss of every step, in order."""
    return [float(r["loss"]) for r in training_steps(records)]


def eval_losses(records: Iterable[Record]) -> list[float]:
    """Every eval loss in order, the untrained model's (step 0) first when it was measured."""
    return [float(r["eval_loss"]) for r in records if "eval_loss" in r and "event" not in r]


def first_last_eval(records: Iterable[Record]) -> tuple[float | None, float | None]:
    """The first and last eval loss; (None, None) when the run never evaluated."""
    values = eval_losses(records)
    return (values[0], values[-1]) if values else (None, None)


def mean_tokens_per_s(records: Iterable[Record]) -> float | None:
    """Mean training throughput over the steps; None without steps."""
    speeds = [float(r["tokens_per_s"]) for r in training_steps(records) if "tokens_per_s" in r]
    return sum(speeds) / len(speeds) if speeds else None
