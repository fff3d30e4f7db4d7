"""Apply, context: what every step of apply works with (specs, registry, console)."""

from __future__ import annotations

from rich.console import Console

from controller.load.desired import Loaded
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
