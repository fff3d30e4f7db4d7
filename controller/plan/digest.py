"""Planning, digests: canonical JSON and the content digest every resource is keyed by."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace, UTF-8; floats in repr form."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def resource_digest(
    kind: str, spec: Mapping[str, Any], inputs: Mapping[str, str], code_version: str
) -> str:
    """sha256 of the canonical resolved spec, the digests of its inputs and the runner version."""
    return sha256_text(
        canonical_json({"kind": kind, "spec": spec, "inputs": dict(inputs), "code": code_version})
    )


def short(digest: str | None) -> str:
    if not digest:
        return "-"
    return digest.removeprefix("sha256:")[:12]
