"""A training run's log.jsonl: written and read by runners/train/log.py, also mid-write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.train.log import (
    LOG_FILE,
    LogError,
    append_record,
    eval_losses,
    first_last_eval,
    losses,
    mean_tokens_per_s,
    read_log,
    training_steps,
    truncate_log,
)

RECORDS = [
    {"step": 0, "eval_loss": 3.0},
    {"step": 1, "loss": 2.5, "lr": 1e-4, "tokens": 100, "tokens_per_s": 50.0},
    {"step": 2, "loss": 2.0, "lr": 1e-4, "tokens": 100, "tokens_per_s": 150.0, "eval_loss": 2.2},
    {"event": "resumed", "step": 2},
    {"step": 3, "loss": 1.5, "lr": 1e-4, "tokens": 100, "tokens_per_s": 100.0, "eval_loss": 1.9},
    {"event": "early_stop", "step": 3},
]


def write(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_written_records_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    with path.open("a") as handle:
        for record in RECORDS:
            append_record(handle, record)
            assert read_log(path)[-1] == record  # flushed: a reader sees it at once
    assert read_log(path) == RECORDS


def test_no_log_yet_is_no_records(tmp_path: Path) -> None:
    assert read_log(tmp_path / LOG_FILE) == []


def test_a_half_written_last_line_is_left_out(tmp_path: Path) -> None:
    path = write(tmp_path / LOG_FILE, RECORDS[:3], tail='{"step": 3, "loss": 1.')
    assert read_log(path) == RECORDS[:3]
    assert losses(read_log(path)) == [2.5, 2.0]


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path / LOG_FILE, RECORDS[:2], tail=json.dumps(RECORDS[2]))
    assert read_log(path) == RECORDS[:3]


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    path.write_text(f"\n{json.dumps(RECORDS[0])}\n\n{json.dumps(RECORDS[1])}\n\n")
    assert read_log(path) == RECORDS[:2]


def test_a_bad_line_before_the_last_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    path.write_text(f'{json.dumps(RECORDS[0])}\n{{"step": 1, "lo\n{json.dumps(RECORDS[1])}\n')
    with pytest.raises(LogError, match=rf"{LOG_FILE}:2: not a JSON record"):
        read_log(path)


def test_a_record_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    path.write_text("[1, 2]\n")
    with pytest.raises(LogError, match=rf"{LOG_FILE}:1: a record must be a JSON object"):
        read_log(path)


def test_losses_are_training_steps_only() -> None:
    assert [r["step"] for r in training_steps(RECORDS)] == [1, 2, 3]
    assert losses(RECORDS) == [2.5, 2.0, 1.5]
    assert losses([{"event": "odd", "step": 4, "loss": 9.0}, {"loss": 1.0}]) == []


def test_eval_losses_start_with_the_untrained_model() -> None:
    assert eval_losses(RECORDS) == [3.0, 2.2, 1.9]
    assert first_last_eval(RECORDS) == (3.0, 1.9)
    assert first_last_eval(RECORDS[1:2]) == (None, None)
    assert first_last_eval([]) == (None, None)


def test_mean_tokens_per_s() -> None:
    assert mean_tokens_per_s(RECORDS) == pytest.approx(100.0)
    assert mean_tokens_per_s(RECORDS[:1]) is None


def test_truncate_keeps_records_up_to_the_checkpoint(tmp_path: Path) -> None:
    # Killed mid-write after step 3; resumed from the checkpoint at step 2.
    path = write(tmp_path / LOG_FILE, RECORDS[:3] + RECORDS[4:5], tail='{"step": 4, "lo')
    truncate_log(path, 2)
    assert read_log(path) == RECORDS[:3]
    with path.open("a") as handle:
        append_record(handle, RECORDS[3])
    assert read_log(path) == RECORDS[:4]
    truncate_log(tmp_path / "missing.jsonl", 2)
    assert not (tmp_path / "missing.jsonl").exists()
