"""State, arena voter keys: who may vote on the dashboard, one key per named person.

The operator creates a key (`llmops arena voters add NAME`); the dashboard signs a browser in
with it and records every vote under NAME, so clearing cookies gives no new voter and the
registry's unique (battle, voter) constraint counts one vote per person. Only a digest of each
key is stored (voters.json in the state folder, readable by its owner only).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from runners.errors import InvalidInput

VOTERS_FILE = "voters.json"
KEY_PREFIX = "llmv_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class VoterError(InvalidInput):
    """A voter name that is malformed, taken or unknown."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class VoterKeys:
    """voters.json under a state folder: {name: {"sha256": digest of the key, "created": t}}."""

    def __init__(self, state_root: Path) -> None:
        self.path = state_root / VOTERS_FILE

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise VoterError(
                f"{self.path}: unreadable ({err}); remove it and add voters again"
            ) from err
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        # created owner-only: the digests are not the keys, but the list of voters is private
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def _lock(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path.with_name(f"{self.path.name}.lock")))

    def names(self) -> list[str]:
        return sorted(self._read())

    def add(self, name: str, replace: bool = False) -> str:
        """A new key for `name` (shown once, never stored); refused if `name` has one already
        unless `replace`, which voids the old key. The name keeps its votes."""
        if not NAME.match(name):
            raise VoterError(
                f"voter name '{name}' is not allowed: letters, digits and . _ @ - (up to 64)"
            )
        with self._lock():
            data = self._read()
            if name in data and not replace:
                raise VoterError(
                    f"voter '{name}' exists already; pass --replace for a new key (the old one "
                    "stops working)"
                )
            key = KEY_PREFIX + secrets.token_urlsafe(24)
            data[name] = {"sha256": _digest(key), "created": time.time()}
            self._write(data)
        return key

    def remove(self, name: str) -> None:
        with self._lock():
            data = self._read()
            if name not in data:
                raise VoterError(f"no voter named '{name}'; see 'llmops arena voters list'")
            del data[name]
            self._write(data)

    def identify(self, key: str | None) -> str | None:
        """The voter whose key this is, or None (no key, unknown or removed)."""
        if not key or not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        try:
            data = self._read()
        except VoterError:
            return None
        wanted = _digest(key)
        for name, entry in sorted(data.items()):
            if isinstance(entry, dict) and hmac.compare_digest(
                str(entry.get("sha256", "")), wanted
            ):
                return name
        return None
