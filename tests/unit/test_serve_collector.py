"""Collection: sampled, PII-redacted JSONL records, whole lines under concurrent writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from runners.serve.collect import Collector

MESSAGES = [
    {"role": "system", "content": "Support bot."},
    {"role": "user", "content": "I am ann@example.com, call +1 415-555-0132 from 10.0.0.7"},
]


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()]


def test_an_interaction_and_its_feedback_are_redacted(tmp_path: Path) -> None:
    collector = Collector(tmp_path, "support", "support@3", sample_rate=1.0, redact_pii=True)
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    written = collector.interaction(
        "chatcmpl-1", MESSAGES, "Key sk-abcdefghijklmnopqrstuvwx0123", usage, "chat"
    )
    collector.feedback("chatcmpl-1", "down", "Write to ann@example.com", "from 10.0.0.7")
    interaction, feedback = lines(tmp_path)
    assert interaction == written
    assert interaction["messages"][1]["content"] == "I am [EMAIL], call [PHONE] from [IP]"
    assert interaction["prompt"] == "I am [EMAIL], call [PHONE] from [IP]"
    assert interaction["response"] == "Key [API_KEY]"
    assert {k: interaction[k] for k in ("type", "id", "deployment", "model_version", "usage")} == {
        "type": "interaction",
        "id": "chatcmpl-1",
        "deployment": "support",
        "model_version": "support@3",
        "usage": usage,
    }
    assert feedback["type"] == "feedback" and feedback["rating"] == "down"
    assert (feedback["correction"], feedback["comment"]) == ("Write to [EMAIL]", "from [IP]")
    assert [p.name[:2] for p in tmp_path.glob("*.jsonl")] == ["20"]  # one file per UTC day


def test_without_redaction_text_is_kept(tmp_path: Path) -> None:
    collector = Collector(tmp_path, "s", "s@1", sample_rate=1.0, redact_pii=False)
    collector.interaction("c", MESSAGES, "ok", {}, "chat")
    assert lines(tmp_path)[0]["prompt"] == MESSAGES[1]["content"]


def test_sampling_is_seeded(tmp_path: Path) -> None:
    kept = []
    for run in range(2):
        collector = Collector(
            tmp_path / str(run), "s", "s@1", sample_rate=0.3, redact_pii=True, seed=4
        )
        kept.append(
            [
                collector.interaction(str(i), MESSAGES, "a", {}, "chat") is not None
                for i in range(200)
            ]
        )
    assert kept[0] == kept[1] and 30 < sum(kept[0]) < 90
    nothing = Collector(tmp_path / "off", "s", "s@1", sample_rate=0.0, redact_pii=True)
    assert nothing.interaction("c", MESSAGES, "a", {}, "chat") is None
    assert lines(tmp_path / "off") == []


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    # Two collectors on one folder stand for the old and new process of a rollout.
    writers = [Collector(tmp_path, "s", f"s@{n}", 1.0, True) for n in (1, 2)]
    long_answer = "x" * 20_000

    def write(collector: Collector, start: int) -> None:
        for i in range(start, start + 50):
            collector.interaction(f"id-{i}", MESSAGES, long_answer, {}, "chat")

    threads = [threading.Thread(target=write, args=(writers[n % 2], n * 50)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = lines(tmp_path)
    assert sorted(r["id"] for r in records) == sorted(f"id-{i}" for i in range(200))
