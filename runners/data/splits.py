"""Runner `prepare`, splits: a row's split is a pure function of its content and the salt."""

from __future__ import annotations

import hashlib

from runners.data.rows import Row, content_hash

SPLITS = ("train", "validation", "test")


def split_of(row: Row, fractions: dict[str, float], salt: str = "") -> str:
    """Hash the row's content into [0, 1); adding or removing other rows never moves it."""
    digest = hashlib.sha256(f"{salt}\0{content_hash(row)}".encode()).hexdigest()
    position = int(digest[:16], 16) / float(1 << 64)
    edge = 0.0
    for name in SPLITS:
        edge += fractions.get(name, 0.0)
        if position < edge:
            return name
    return next(n for n in reversed(SPLITS) if fractions.get(n, 0.0) > 0)


def assign(rows: list[Row], fractions: dict[str, float], salt: str = "") -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for row in rows:
        out[split_of(row, fractions, salt)].append(row)
    return out
