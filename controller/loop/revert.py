"""Production loop, revert: a deployment that failed its post-deploy check on the main branch
(and kept or went back to its previous version) gets a pull request reverting the commit that
asked for it, so git says again what actually serves (R-DEPLOY-6).

The revert is built in a worktree under `<state>/reverts/`, pushed to its own branch
`llmops/revert/<short sha>` and proposed like any change; a person merges it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.state import git
from controller.state.paths import StatePaths
from runners.errors import LlmopsError

Publisher = Callable[[str, str, str, list[str], list[str]], dict[str, Any]]


class RevertFailed(LlmopsError):
    """The revert could not be prepared (a conflict, no remote); says what to do by hand."""


@dataclass(frozen=True)
class Revert:
    branch: str
    reverted: str  # the commit undone
    pull_request: dict[str, Any] | None
    message: str


def propose_revert(
    root: Path,
    failures: dict[str, str],
    publish: Publisher | None,
    remote: str = "origin",
    ref: str = "HEAD",
) -> Revert:
    """Revert `ref` (the commit apply just rolled out; a merge is reverted against its first
    parent) on a new branch and open a pull request naming each failed deployment and why."""
    commit = git.resolve_commit(root, ref)
    subject = git.subject(root, commit)
    branch = f"llmops/revert/{commit[:12]}"
    folder = StatePaths.for_repo(root).root / "reverts" / "worktree"
    worktree = git.worktree_at(root, folder, branch, commit)
    why = "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items()))
    try:
        git.revert(worktree, commit, f'Revert "{subject}"\n\nllmops apply: {why}')
    except git.GitError as err:
        raise RevertFailed(
            f"{commit[:12]} cannot be reverted automatically ({err}); revert it by hand"
        ) from err
    if not git.has_remote(root, remote):
        return Revert(branch, commit, None, f"revert committed on {branch} (no remote '{remote}')")
    git.push(worktree, remote, branch)
    if publish is None:
        return Revert(branch, commit, None, f"revert pushed to {branch}; open a pull request")
    body = "\n".join(
        [
            "<!-- llmops-revert -->",
            f"`llmops apply` rolled out `{commit[:12]}` ({subject}) and the deployment failed "
            "its post-deploy check, so the previous version keeps serving. This reverts the "
            "commit so the specs say again what serves.",
            "",
            "| deployment | what happened |",
            "|---|---|",
            *(f"| `{name}` | {reason} |" for name, reason in sorted(failures.items())),
        ]
    )
    title = f'Revert "{subject}": {", ".join(sorted(failures))} failed its post-deploy check'
    pull = publish(branch, title, body, [], ["revert"])
    verb = "opened" if pull.get("created") else "updated"
    return Revert(branch, commit, pull, f"revert pull request #{pull['number']} {verb}")
