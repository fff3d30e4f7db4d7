"""Apply, hooks: how apply reports progress and results, after Terraform's terraform/hook.go.

The apply service (controller/workspace.py `apply_workspace`), the Applier and the deploy
targets report through an `ApplyHooks`; `llmops apply` and the production loop print with
`ConsoleHooks` (rich), and a caller that wants the events as data implements the same methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Protocol

from rich.console import Console
from rich.markup import escape

from controller.plan.types import Plan
from controller.report.terminal import print_plan

if TYPE_CHECKING:  # annotations only: the engine imports this module
    from controller.apply.engine import ActionResult


class ApplyHooks(Protocol):
    console: Console  # where apply's steps print their details

    def waiting(self, holder: str) -> None:
        """Another apply holds the state folder's lock; this one waits for it."""

    def planned(self, plan: Plan) -> None:
        """The plan, made once the lock is held."""

    def pre_action(self, address: str, verb: str) -> None:
        """An action starts (`verb`: create, retrain, recording, delete, ...)."""

    def post_action(self, result: ActionResult) -> None:
        """An action ended: applied, recorded, failed or skipped."""

    def note(self, message: str) -> None:
        """A line of progress inside an action."""

    def working(self, message: str) -> AbstractContextManager[Callable[[str], None]]:
        """Long work inside an action; the callable replaces its message."""
        ...


class ConsoleProgress:
    """Progress on a rich console: notes as lines, long work as a spinner."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, message: str) -> None:
        self.console.print(message)

    @contextmanager
    def working(self, message: str) -> Iterator[Callable[[str], None]]:
        with self.console.status(message) as status:
            yield lambda text: status.update(text)


class ConsoleHooks(ConsoleProgress):
    """ApplyHooks for a terminal: actions and results on `console`, waiting on `wait_console`,
    the plan as a table unless `show_plan` is off (JSON output)."""

    def __init__(
        self, console: Console, wait_console: Console | None = None, show_plan: bool = False
    ) -> None:
        super().__init__(console)
        self.wait_console = wait_console or console
        self.show_plan = show_plan

    def waiting(self, holder: str) -> None:
        self.wait_console.print(f"waiting for another apply to finish ({holder}) ...")

    def planned(self, plan: Plan) -> None:
        if self.show_plan:
            print_plan(self.console, plan)

    def pre_action(self, address: str, verb: str) -> None:
        self.console.print(f"[bold]{verb}[/bold] {address}")

    def post_action(self, result: ActionResult) -> None:
        if result.status == "failed":
            self.console.print(f"  [red]failed[/red]: {escape(result.message or '')}")
        elif result.status in ("applied", "recorded") and result.action != "delete":
            self.console.print(
                f"  [green]{result.status}[/green] {result.address} in {result.seconds:.1f} s"
            )
