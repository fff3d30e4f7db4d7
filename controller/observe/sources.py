"""Observation, a Dataset's outside rows: an Arena's decisive votes and a collected store's rows,
digested when the specs load so the plan sees them change (they are not in any spec file).

`SourceDigests` is the load layer's `observe_source` callback (controller/load/resolve.py):
given a Dataset's format and one of its `arena` or `collected` sources, the sha256 of the rows
that source gives now, as `llmops data prepare` would read them. The arena's digest is the one
a prepared version records as `pairs_sha256` in its lineage.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.api.dataset import ArenaSource, CollectedSource
from controller.state.paths import StatePaths
from controller.state.registry.arena import ArenaStore, export_battles
from controller.state.registry.store import Registry
from runners.arena.fastchat import preference_rows
from runners.data.collected import read_collected


def pairs_digest(pairs: list[dict[str, Any]]) -> str:
    """sha256 of an arena's decisive pairs (the prepared version's `pairs_sha256`)."""
    text = json.dumps(pairs, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SourceDigests:
    """Digests of the rows outside the repository that Datasets read, for one state folder."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self._registry: Registry | None = None

    def __call__(self, fmt: str, source: Any) -> str | None:
        if isinstance(source, ArenaSource):
            return "sha256:" + pairs_digest(self._arena_pairs(source.arena))
        if isinstance(source, CollectedSource):
            loaded = read_collected(
                self.paths.collected(source.store),
                f"collected/{source.store}",
                fmt,
                dict(source.mapping),
                source.only_positive_feedback,
            )
            rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in loaded.rows]
            text = json.dumps(rows, sort_keys=True, ensure_ascii=False)
            return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
        return None

    def _arena_pairs(self, arena: str) -> list[dict[str, Any]]:
        """The arena's decisive votes as pairs, read as `llmops arena export --format dpo`
        reads them; none while no registry exists yet."""
        if not self.paths.has_registry:
            return []
        if self._registry is None:
            self._registry = Registry.open(self.paths)
        return preference_rows(export_battles(ArenaStore(self._registry).battles(arena)))
