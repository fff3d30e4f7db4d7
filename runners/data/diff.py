"""Runner `prepare`, diffs: rows added, removed and changed between two prepared versions."""

from __future__ import annotations

from typing import Any

from runners.data.rows import Row, content_hash, row_key


def diff_rows(before: list[Row], after: list[Row], fmt: str, examples: int = 5) -> dict[str, Any]:
    """Rows are the same when their content is; 'changed' when only the key matches."""
    old = {content_hash(r): r for r in before}
    new = {content_hash(r): r for r in after}
    removed = [old[h] for h in old if h not in new]
    added = [new[h] for h in new if h not in old]
    removed_by_key = {row_key(r, fmt): r for r in removed}
    changed = [
        (removed_by_key[row_key(r, fmt)], r) for r in added if row_key(r, fmt) in removed_by_key
    ]
    changed_keys = {row_key(b, fmt) for _, b in changed}
    pure_added = [r for r in added if row_key(r, fmt) not in changed_keys]
    pure_removed = [r for r in removed if row_key(r, fmt) not in changed_keys]
    return {
        "added": len(pure_added),
        "removed": len(pure_removed),
        "changed": len(changed),
        "unchanged": len(set(old) & set(new)),
        "examples": {
            "added": pure_added[:examples],
            "removed": pure_removed[:examples],
            "changed": [{"before": a, "after": b} for a, b in changed[:examples]],
        },
    }
