"""The production loop's trigger and collected windows: pure decisions over given times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.loop.trigger import decide
from controller.loop.window import (
    collected_window,
    snapshot_lines,
    snapshot_path,
    watermark,
)

MONDAY_3AM = "0 3 * * 1"
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # a Monday, after the 03:00 tick


def test_too_few_new_rows_skip_with_the_count() -> None:
    decision = decide(None, 200, 57, None, NOW, scheduled=False)
    assert not decision.go
    assert decision.reason == "57 new row(s) since the last run; the trigger needs 200"


def test_enough_rows_run() -> None:
    assert decide(None, 200, 200, None, NOW, scheduled=False).go


def test_a_scheduled_run_waits_for_its_tick_and_catches_up_once() -> None:
    after_tick = NOW - timedelta(hours=1)  # the last run was after today's 03:00 tick
    waiting = decide(MONDAY_3AM, 0, 10, after_tick, NOW, scheduled=True)
    assert not waiting.go and waiting.reason.startswith("not due: next tick")
    assert waiting.next_tick == datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    three_weeks_ago = NOW - timedelta(days=21)  # three ticks missed: one run, not three
    assert decide(MONDAY_3AM, 0, 10, three_weeks_ago, NOW, scheduled=True).go
    # Started by hand, the schedule does not hold it back.
    assert decide(MONDAY_3AM, 0, 10, after_tick, NOW, scheduled=False).go


def _store(folder: Path) -> Path:
    folder.mkdir(parents=True)
    records = []
    for index, minute in enumerate((1, 2, 3)):
        time = f"2026-11-30T08:0{minute}:00.000+00:00"
        records.append(
            {
                "type": "interaction",
                "id": f"i{index}",
                "time": time,
                "prompt": f"q{index}",
                "response": f"a{index}",
                "messages": [{"role": "user", "content": f"q{index}"}],
            }
        )
    records.append({"type": "feedback", "id": "i0", "rating": "down", "correction": "fixed"})
    records.append({"type": "feedback", "id": "i1", "rating": "down"})
    records.append({"type": "feedback", "id": "i2", "rating": "up"})
    (folder / "2026-11-30.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_window_takes_rows_after_the_watermark_and_keeps_positive_ones(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    mark = datetime(2026, 11, 30, 8, 1, tzinfo=UTC)
    window = collected_window(store, "chats", mark, NOW)
    assert [r["id"] for r in window.rows] == ["i1", "i2"]
    everything = collected_window(store, "chats", None, NOW)
    kept = everything.kept(only_positive=True)
    assert [(r["id"], r["response"]) for r in kept] == [("i0", "fixed"), ("i2", "a2")]
    lines = [json.loads(line) for line in snapshot_lines(kept, "instruction").splitlines()]
    assert lines[0] == {
        "id": "i0",
        "prompt": "q0",
        "response": "fixed",
        "rating": "down",
        "time": "2026-11-30T08:01:00.000+00:00",
    }


def test_the_newest_snapshot_a_dataset_names_is_its_watermark() -> None:
    first = snapshot_path("faq", datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    second = snapshot_path("faq", datetime(2026, 11, 9, 3, 0, 0, 500, tzinfo=UTC))
    assert second == "data/collected/faq/20261109T030000000500Z.jsonl"
    paths = ["data/faq.jsonl", first, second, "data/collected/other/20261201T000000000000Z.jsonl"]
    assert watermark(paths, "faq") == datetime(2026, 11, 9, 3, 0, 0, 500, tzinfo=UTC)
    assert watermark(["data/faq.jsonl"], "faq") is None
