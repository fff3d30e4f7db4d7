"""Observation from the lock file: each entry becomes an ObservedResource."""

from __future__ import annotations

from typing import Any

from controller.plan.types import ObservedResource, ObservedState
from controller.state.lockfile import LOCK_FILE


def observed_from_lock(data: dict[str, Any], source: str = LOCK_FILE) -> ObservedState:
    resources = {
        address: ObservedResource(
            address=address,
            kind=str(entry.get("kind") or address.split("/", 1)[0]),
            digest=entry["digest"],
            spec=entry.get("spec") or {},
            inputs=entry.get("inputs") or {},
            code_version=str(entry.get("code_version") or ""),
            outputs=entry.get("outputs") or {},
        )
        for address, entry in data["resources"].items()
    }
    return ObservedState(resources=resources, source=source)
