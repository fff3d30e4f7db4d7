"""Apply, context: what every step of apply works with (specs, registry, console)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console

from controller.load.code import code_identities
from controller.load.desired import Loaded
from controller.state.provenance import Provenance, TrustContext, accepts
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import Registry


class ApplyStep:
    """Base of the steps apply runs over one loaded, valid repository."""

    def __init__(self, loaded: Loaded, registry: Registry, console: Console) -> None:
        if loaded.desired is None:
            raise ValueError("apply steps need specs that resolved without errors")
        self.loaded = loaded
        self.desired = loaded.desired
        self.registry = registry
        self.console = console
        self.root = loaded.root
        self.trust: TrustContext | None = None  # set by the Applier: the ref it applies for

    @property
    def namespace(self) -> str:
        """'' for results a trusted ref produces; a suffix that keeps an untrusted ref's
        results (evaluations, arena answers and votes, scans) where a trusted apply never
        looks (the trust boundary in docs/architecture.md)."""
        return "" if self.trust is None or self.trust.trusted else ".untrusted"

    def code_digest(self, runner: str) -> str:
        """The code digest of a runner as this process runs it (controller/load/code.py)."""
        return code_identities(cache_dir=self.registry.paths.cache)[runner].digest

    def provenance(self, code: str) -> dict[str, Any]:
        """What a result stored now records: the commit, code digest, ref and trust."""
        if self.trust is None:
            return {}
        return {"provenance": self.trust.provenance(code).as_dict()}

    def reusable(
        self, version: VersionRow, code: str, code_files: Mapping[str, str]
    ) -> tuple[bool, str]:
        """Whether a version stored under the desired digest may be reused here (the trust
        rule in controller/state/provenance.py)."""
        if self.trust is None:
            return True, ""
        recorded = Provenance.from_dict((version.extra or {}).get("provenance"))
        return accepts(self.trust, recorded, code, code_files)
