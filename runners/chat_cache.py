"""Runners, shared: a request cache in front of an OpenAI-compatible chat endpoint, used by
an EvalSuite run on an endpoint (runners/evaluate/chat.py) and a Dataset's teacher endpoint
(runners/data/augment.py).

A reply is stored by the digest of (endpoint, model, settings, prompt), so a rerun with the
same settings asks nothing again, and a change of any of them asks again. The key is not
part of the digest and never stored. Requests run at most `concurrency` at a time; the
latency and token usage of each reply are stored with it, so a rerun that asks nothing still
reports them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.arena.chat_endpoint import ChatEndpoint, ChatReply


@dataclass(frozen=True)
class CachedReply:
    reply: ChatReply
    cached: bool  # found in the cache: no request was sent for it


def request_digest(client: ChatEndpoint, prompt: str, max_tokens: int, settings: Any) -> str:
    """What a reply depends on: where, which model, the settings and the prompt; not the key."""
    document = {
        "url": client.url,
        "model": client.model,
        "max_tokens": max_tokens,
        "settings": {k: v for k, v in sorted(dict(settings).items()) if v is not None},
        "prompt": prompt,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


class RequestCache:
    """Replies by request digest in one SQLite file; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (digest TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "latency_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER)"
        )
        self._db.commit()

    def get(self, digest: str) -> ChatReply | None:
        with self._lock:
            row = self._db.execute(
                "SELECT text, latency_s, prompt_tokens, completion_tokens FROM replies "
                "WHERE digest = ?",
                (digest,),
            ).fetchone()
        return None if row is None else ChatReply(row[0], float(row[1] or 0.0), row[2], row[3])

    def put(self, digest: str, reply: ChatReply) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                (
                    digest,
                    reply.text,
                    reply.latency_s,
                    reply.prompt_tokens,
                    reply.completion_tokens,
                ),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def cached_chats(
    client: ChatEndpoint,
    cache: RequestCache,
    prompts: list[str],
    max_tokens: int,
    settings: dict[str, Any],
    concurrency: int,
    on_reply: Callable[[], None] | None = None,
) -> list[CachedReply]:
    """One reply per prompt, in order: from the cache, else asked (at most `concurrency`
    requests in flight, retries as the client does them) and stored."""

    def ask(prompt: str) -> CachedReply:
        digest = request_digest(client, prompt, max_tokens, settings)
        stored = cache.get(digest)
        if stored is not None:
            return CachedReply(stored, True)
        reply = client.chat(prompt, max_tokens, **settings)
        cache.put(digest, reply)
        if on_reply is not None:
            on_reply()
        return CachedReply(reply, False)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(ask, prompts))


def usage_of(replies: list[CachedReply], client: ChatEndpoint) -> dict[str, Any]:
    """Latency and token usage of the replies (stored ones included), and this run's requests."""
    latencies = sorted(r.reply.latency_s for r in replies)

    def total(name: str) -> int | None:
        known = [v for r in replies if isinstance(v := getattr(r.reply, name), int)]
        return sum(known) if known else None

    return {
        "answers": len(replies),
        "cached": sum(1 for r in replies if r.cached),
        "latency_s": round(sum(latencies) / len(latencies), 4) if latencies else None,
        "latency_p95_s": (
            round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4)
            if latencies
            else None
        ),
        "prompt_tokens": total("prompt_tokens"),
        "completion_tokens": total("completion_tokens"),
        "requests": client.requests,
        "retries": client.retried,
    }
