"""State, git: the repository's git history as the report and training read it.

The one module that runs git as a subprocess: resolving refs (`rev-parse`), reading a file
as of a commit (`show <ref>:<path>`) and listing uncommitted changes (`status
--porcelain`). Small typed functions; every failure is a `GitError` whose message names the
repository, what was asked and what to do. (History reads whole logs through GitPython in
controller/history/.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from runners.errors import InvalidInput

TIMEOUT_S = 30


class GitError(InvalidInput):
    """Git could not answer: not a repository, an unknown ref, or git itself is missing.

    Exit 2 through the CLI: the ref or folder the user named is what has to change.
    """


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except FileNotFoundError as err:
        raise GitError("git is not installed (or not on PATH); install git and rerun") from err
    except subprocess.TimeoutExpired as err:
        raise GitError(f"git {' '.join(args)} in {root} took over {TIMEOUT_S} s") from err
    except OSError as err:  # root is not a folder, permissions
        raise GitError(f"cannot run git in {root}: {err}") from err


def resolve_commit(root: Path, ref: str) -> str:
    """The full sha of the commit `ref` names (a branch, tag, sha or `HEAD~2`)."""
    out = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if out.returncode != 0:
        raise GitError(
            f"{ref}: no such commit in {root}; fetch it (git fetch origin) or name another "
            "branch, tag or sha"
        )
    return out.stdout.strip()


def head_commit(root: Path) -> str | None:
    """The sha of HEAD; None outside a git repository or before the first commit."""
    try:
        out = _git(root, "rev-parse", "HEAD")
    except GitError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit_of(root: Path, rev: str) -> str | None:
    """The commit `rev` names (a sha, `HEAD^2`), or None when the repository has no such
    commit."""
    try:
        out = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except GitError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def short_head(root: Path) -> str | None:
    """HEAD's abbreviated sha; None outside a git repository or before the first commit."""
    try:
        out = _git(root, "rev-parse", "--short", "HEAD")
    except GitError:
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def show_file(root: Path, ref: str, path: str) -> str | None:
    """The text of `path` (relative to the repository root) as of `ref`; None when that commit
    has no such file. An unknown ref raises GitError."""
    commit = resolve_commit(root, ref)
    out = _git(root, "show", f"{commit}:./{path}")  # ./: from root, not the top level
    return out.stdout if out.returncode == 0 else None


def changed_paths(root: Path, *pathspecs: str) -> list[str]:
    """Paths with uncommitted changes (staged, unstaged or untracked) under `pathspecs`;
    [] outside a git repository."""
    try:
        out = _git(root, "status", "--porcelain", "--", *pathspecs)
    except GitError:
        return []
    if out.returncode != 0:
        return []
    return [line[3:] for line in out.stdout.splitlines() if len(line) > 3]


# -- branches for the production loop ----------------------------------------------------------


def _checked(root: Path, *args: str) -> str:
    out = _git(root, *args)
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise GitError(f"git {' '.join(args)} in {root} failed: {detail[-1] if detail else ''}")
    return out.stdout.strip()


def worktree_at(root: Path, folder: Path, branch: str, start: str) -> Path:
    """A worktree of `root` at `folder` with `branch` reset to `start` and no stray files:
    the same clean starting point however often, or however abruptly, a run stopped."""
    if (folder / ".git").exists():
        _checked(folder, "checkout", "-q", "-B", branch, start)
        _checked(folder, "reset", "-q", "--hard", start)
        _checked(folder, "clean", "-q", "-fdx", "-e", ".dvc/config.local")
        return folder
    _git(root, "worktree", "prune")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _checked(root, "worktree", "add", "-q", "-f", "-B", branch, str(folder), start)
    return folder


def commit_all(folder: Path, message: str, author: str = "llmops <llmops@localhost>") -> str:
    """Commit every change in `folder` (a worktree); the new commit's sha."""
    _checked(folder, "add", "-A")
    name, _, email = author.partition(" <")
    _checked(
        folder,
        "-c",
        f"user.name={name}",
        "-c",
        f"user.email={email.rstrip('>')}",
        "commit",
        "-q",
        "--no-verify",
        "-m",
        message,
    )
    return _checked(folder, "rev-parse", "HEAD")


def differs(folder: Path, a: str, b: str) -> bool:
    """Whether the trees of two commits differ."""
    return _git(folder, "diff", "--quiet", a, b).returncode != 0


def remote_branch(root: Path, remote: str, branch: str) -> str | None:
    """The sha `branch` has on `remote` now, or None when the remote has no such branch."""
    out = _checked(root, "ls-remote", "--heads", remote, f"refs/heads/{branch}")
    return out.split()[0] if out else None


def has_remote(root: Path, remote: str) -> bool:
    return _git(root, "remote", "get-url", remote).returncode == 0


def push(folder: Path, remote: str, branch: str) -> None:
    """Push `branch`, replacing what the remote has: the loop owns its branches."""
    _checked(folder, "push", "-q", "--force", remote, f"HEAD:refs/heads/{branch}")


def file_at(root: Path, ref: str, path: str) -> str | None:
    """Like show_file, for a ref that may not exist: None when either is missing."""
    out = _git(root, "show", f"{ref}:./{path}")
    return out.stdout if out.returncode == 0 else None


def subject(root: Path, commit: str) -> str:
    return _checked(root, "log", "-1", "--format=%s", commit)


def revert(
    folder: Path, commit: str, message: str, author: str = "llmops <llmops@localhost>"
) -> str:
    """Revert `commit` in the worktree (against its first parent when it is a merge) and
    commit with `message`; the new commit's sha. A conflict raises GitError."""
    parents = _checked(folder, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    mainline = ["-m", "1"] if len(parents) > 1 else []
    name, _, email = author.partition(" <")
    out = _git(
        folder,
        "-c",
        f"user.name={name}",
        "-c",
        f"user.email={email.rstrip('>')}",
        "revert",
        "--no-edit",
        "--no-commit",
        *mainline,
        commit,
    )
    if out.returncode != 0:
        _git(folder, "revert", "--abort")
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise GitError(f"git revert {commit[:12]} failed: {detail[-1] if detail else ''}")
    return commit_all(folder, message, author)


# -- provenance: which ref produced a result, and whether main may trust it -------------------


def current_branch(root: Path) -> str | None:
    """The checked-out branch's name; None when HEAD is detached or outside a repository."""
    try:
        out = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    except GitError:
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def is_ancestor(root: Path, commit: str, of: str = "HEAD") -> bool:
    """Whether `commit` is reachable from `of` (False for an unknown commit)."""
    try:
        out = _git(root, "merge-base", "--is-ancestor", commit, of)
    except GitError:
        return False
    return out.returncode == 0


def top_level(root: Path) -> Path | None:
    """The repository's top folder; None outside a repository."""
    try:
        out = _git(root, "rev-parse", "--show-toplevel")
    except GitError:
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def blob_bytes(root: Path, commit: str, path: str) -> bytes | None:
    """The bytes of `path` (from the top level) at `commit`; None when it has no such file."""
    try:
        out = subprocess.run(
            ["git", "cat-file", "blob", f"{commit}:{path}"],
            cwd=root,
            capture_output=True,
            timeout=TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise GitError(f"cannot read {path} at {commit[:12]} in {root}: {err}") from err
    return out.stdout if out.returncode == 0 else None
