"""Runner `serve`, collection: sampled interactions and feedback appended to a JSONL store.

One file per UTC day, `<dir>/<YYYY-MM-DD>.jsonl`. Writers hold a thread lock and a file
lock, so requests of this process and of the process replacing it during a rollout never
interleave lines. Each row names the client whose key sent it ("anonymous" on a keyless
runtime). PII is redacted with dataset preparation's own redaction (runners/data/steps.py).
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from runners.data.steps import PII_PATTERNS, redact_text
from runners.serve.config import ANONYMOUS_CLIENT
from runners.serve.usage import current_client

KINDS = list(PII_PATTERNS)


class Collector:
    def __init__(
        self,
        folder: Path,
        deployment: str,
        model_version: str,
        sample_rate: float,
        redact_pii: bool,
        seed: int | None = None,
    ) -> None:
        self.folder = folder
        self.deployment = deployment
        self.model_version = model_version
        self.sample_rate = sample_rate
        self.redact_pii = redact_pii
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.file_lock = FileLock(str(self.folder / ".write.lock"))

    def _redact(self, text: str | None) -> str | None:
        if text is None or not self.redact_pii:
            return text
        return redact_text(text, KINDS, Counter())

    def sampled(self) -> bool:
        with self.lock:
            return self.random.random() < self.sample_rate

    def interaction(
        self,
        id: str,
        messages: list[dict[str, str]],
        response: str,
        usage: dict[str, int],
        endpoint: str,
    ) -> dict[str, Any] | None:
        """Append the interaction when sampled; the record written, or None."""
        if not self.sampled():
            return None
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        record = {
            "type": "interaction",
            "id": id,
            "time": _now(),
            "deployment": self.deployment,
            "model_version": self.model_version,
            "endpoint": endpoint,
            "client": current_client() or ANONYMOUS_CLIENT,
            "messages": [{**m, "content": self._redact(m["content"])} for m in messages],
            "response": self._redact(response),
            "prompt": self._redact(prompt),
            "usage": usage,
        }
        self._append(record)
        return record

    def feedback(
        self, id: str, rating: str, correction: str | None, comment: str | None
    ) -> dict[str, Any]:
        record = {
            "type": "feedback",
            "id": id,
            "time": _now(),
            "deployment": self.deployment,
            "model_version": self.model_version,
            "client": current_client() or ANONYMOUS_CLIENT,
            "rating": rating,
            "correction": self._redact(correction),
            "comment": self._redact(comment),
        }
        self._append(record)
        return record

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        path = self.folder / f"{datetime.now(UTC):%Y-%m-%d}.jsonl"
        with self.lock, self.file_lock, path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
