"""Observation from the lock file: each entry of what was applied becomes an ObservedResource."""

from __future__ import annotations

from controller.plan.types import ObservedResource, ObservedState
from controller.state.lockfile import LOCK_FILE, LockFile


def observed_from_lock(lock: LockFile, source: str = LOCK_FILE) -> ObservedState:
    resources = {
        str(address): ObservedResource(
            address=str(address),
            kind=entry.kind,
            digest=entry.digest,
            fields=entry.spec,
            inputs=entry.inputs,
            code_version=entry.code_version,
            outputs=entry.outputs.model_dump(exclude_defaults=True),
            code_files=lock.code_files(entry.code_version),
        )
        for address, entry in lock.entries()
    }
    return ObservedState(resources=resources, source=source)
