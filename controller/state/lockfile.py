"""State, lock file: llmops.lock, the committed record of what was applied, by digest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from controller.load.diagnostics import Diagnostic
from controller.plan.types import DesiredState

LOCK_FILE = "llmops.lock"
LOCK_VERSION = 1


class LockFileError(Exception):
    """The lock file exists but cannot be used; carries a diagnostic for the user."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def read_lock(path: Path) -> dict[str, Any]:
    """The lock file's content; an empty lock when the file does not exist yet."""
    if not path.exists():
        return {"lockVersion": LOCK_VERSION, "resources": {}}
    shown = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LockFileError(
            Diagnostic(
                shown,
                err.lineno,
                err.colno,
                "",
                f"invalid JSON: {err.msg}",
                f"restore it from git ('git checkout -- {shown}') or fix the syntax",
            )
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise LockFileError(Diagnostic(shown, 1, 1, "", f"cannot read: {err}", "")) from err
    if not isinstance(data, dict) or not isinstance(data.get("resources"), dict):
        raise LockFileError(
            Diagnostic(
                shown,
                1,
                1,
                "resources",
                "not an llmops lock file: no 'resources' mapping",
                f"restore it from git ('git checkout -- {shown}')",
            )
        )
    version = data.get("lockVersion")
    if version != LOCK_VERSION:
        raise LockFileError(
            Diagnostic(
                shown,
                1,
                1,
                "lockVersion",
                f"unsupported lockVersion {version!r}",
                f"this llmops reads lockVersion {LOCK_VERSION}; upgrade llmops",
            )
        )
    for address, entry in data["resources"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            raise LockFileError(
                Diagnostic(
                    shown,
                    1,
                    1,
                    f"resources.{address}",
                    "entry has no 'digest'",
                    f"restore it from git ('git checkout -- {shown}')",
                )
            )
    return data


def render_lock(data: dict[str, Any]) -> str:
    """Stable text: sorted keys and two-space indents keep git diffs small and reviewable."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(render_lock(data), encoding="utf-8")
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def lock_entry(
    desired: DesiredState, address: str, outputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    resource = desired.resources[address]
    return {
        "kind": resource.kind,
        "digest": resource.digest,
        "code_version": resource.code_version,
        "inputs": dict(resource.inputs),
        "spec": dict(resource.spec),
        "outputs": outputs or {},
    }


def lock_from_desired(desired: DesiredState) -> dict[str, Any]:
    """A lock that records every desired resource as applied (used by apply and by tests)."""
    return {
        "lockVersion": LOCK_VERSION,
        "resources": {a: lock_entry(desired, a) for a in sorted(desired.resources)},
    }
