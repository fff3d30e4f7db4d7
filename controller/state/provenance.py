"""State, provenance: who produced a stored result, and whether a trusted apply may reuse it.

Every result apply stores (a registered model version, a prepared dataset version) records
its provenance: the commit, the runner's code digest, the ref (branch) that produced it and
whether that ref was trusted (main, master, or a ref `LLMOPS_PROTECTED_REFS` names). A pull
request's apply runs the branch's code on a shared state folder, so what it stored is only
its claim. The trust rule (docs/architecture.md, "Trust boundary"): an apply on a trusted
ref reuses a result found under a digest when it was produced by a trusted ref, or, from an
untrusted one, only when

1. the recorded code digest equals this apply's code digest for the runner (the resource
   digest, spec and inputs, is equal already: that is how the result was found),
2. the recorded commit is reachable from this apply's HEAD (it was merged, so reviewed), and
3. where the runners' source lives in this repository, every file of the runner's code is
   byte-identical at that commit to what this apply runs, read from git objects, not from
   anything the pull request's job wrote.

Otherwise the result is recomputed, and the new, trusted result is the one promoted and
deployed. A result recorded before provenance existed is accepted and named by
`llmops models verify`.

The commit recorded is the one a merge can put on main: on a pull request GitHub checks out
a synthetic merge commit (refs/pull/N/merge) that never becomes an ancestor of main, so the
pull request's head (`LLMOPS_COMMIT`, else HEAD's second parent) is recorded instead. A state
folder a trusted apply used is marked (`state.json`), and an untrusted apply refuses such a
folder unless it is the checkout's own or `--allow-shared-state` says the sharing is meant.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.load.code import runners_source
from controller.state.git import (
    blob_bytes,
    commit_of,
    current_branch,
    head_commit,
    is_ancestor,
    top_level,
)
from runners.errors import InvalidInput

PROTECTED_REFS_ENV = "LLMOPS_PROTECTED_REFS"
DEFAULT_PROTECTED = ("main", "master")
UNTRUSTED_NAMESPACE = "untrusted"  # the registry tag value results from untrusted refs carry
TRUSTED_NAMESPACE = "trusted"
COMMIT_ENV = "LLMOPS_COMMIT"  # the commit to record, when HEAD is not it (a pull request's head)
ALLOW_SHARED_ENV = "LLMOPS_ALLOW_SHARED_STATE"
STATE_MARK = "state.json"  # in a state folder: {"trusted": true} once a trusted apply used it
SYNTHETIC_MERGE = re.compile(r"refs/pull/[^/]+/merge")


@dataclass(frozen=True)
class Provenance:
    """What produced one stored result."""

    commit: str | None
    code: str  # the runner's code digest
    ref: str
    trusted: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Provenance | None:
        if not data or "ref" not in data:
            return None
        return cls(
            commit=data.get("commit"),
            code=str(data.get("code") or ""),
            ref=str(data["ref"]),
            trusted=bool(data.get("trusted")),
        )

    def describe(self) -> str:
        commit = (self.commit or "no commit")[:12]
        trust = "trusted" if self.trusted else "untrusted"
        return f"{self.ref or 'unknown ref'} @ {commit}, {trust}, code {self.code[7:19] or '-'}"


@dataclass(frozen=True)
class TrustContext:
    """The ref this process applies for, and whether results it produces are trusted."""

    root: Path
    ref: str
    commit: str | None
    trusted: bool
    protected: tuple[str, ...] = DEFAULT_PROTECTED

    def provenance(self, code: str) -> Provenance:
        return Provenance(commit=self.commit, code=code, ref=self.ref, trusted=self.trusted)


def protected_refs(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    named = [r.strip() for r in env.get(PROTECTED_REFS_ENV, "").split(",") if r.strip()]
    return tuple(named) or DEFAULT_PROTECTED


def normalise_ref(ref: str) -> str:
    """'refs/heads/main' -> 'main'; other refs (refs/pull/3/merge, tags) keep their form."""
    return ref.removeprefix("refs/heads/")


def trust_context(
    root: Path, ref: str | None = None, environ: Mapping[str, str] | None = None
) -> TrustContext:
    """The ref: `--ref`, else GitHub's (GITHUB_HEAD_REF for a pull request, GITHUB_REF
    otherwise), else the checked-out branch. Trusted when it is a protected ref; a folder
    outside git (no refs to tell apart, no CI) is local work and trusted."""
    env = os.environ if environ is None else environ
    named = ref or env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF")
    if not named and top_level(root) is None:
        return TrustContext(root, "local", None, True, protected_refs(env))
    name = ref or env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF") or current_branch(root)
    name = normalise_ref(name or "")
    protected = protected_refs(env)
    pull_request = bool(env.get("GITHUB_HEAD_REF")) and not ref
    trusted = bool(name) and name in protected and not pull_request
    return TrustContext(root, name, recorded_commit(root, env), trusted, protected)


def recorded_commit(root: Path, environ: Mapping[str, str] | None = None) -> str | None:
    """The commit results record: `LLMOPS_COMMIT` when set (the workflow exports the pull
    request's head), else HEAD, except that a synthetic merge commit (GITHUB_REF is
    refs/pull/N/merge and HEAD has a second parent) records that second parent, the pull
    request's head: a merge puts it on main, while the merge commit itself never lands there,
    so a result recorded at it could never pass the trust rule's reachability check."""
    env = os.environ if environ is None else environ
    explicit = env.get(COMMIT_ENV, "").strip()
    if explicit:
        found = commit_of(root, explicit)
        if found is None:
            raise InvalidInput(
                f"{COMMIT_ENV}={explicit} is not a commit of this checkout; fetch it "
                "(actions/checkout with fetch-depth: 0) or unset it"
            )
        return found
    head = head_commit(root)
    if head and SYNTHETIC_MERGE.fullmatch(env.get("GITHUB_REF", "")):
        return commit_of(root, "HEAD^2") or head
    return head


def state_marked_trusted(state_root: Path) -> bool:
    """Whether a trusted apply has used this state folder (its `state.json` says so)."""
    try:
        data = json.loads((state_root / STATE_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("trusted") is True


def mark_state_trusted(state_root: Path, context: TrustContext) -> None:
    """Record that a trusted apply uses this folder, so an untrusted one finds out (once:
    the mark is never removed, and writing it again would only churn)."""
    if state_marked_trusted(state_root):
        return
    state_root.mkdir(parents=True, exist_ok=True)
    tmp = state_root / f".{STATE_MARK}.{os.getpid()}"
    tmp.write_text(
        json.dumps({"trusted": True, "ref": context.ref, "commit": context.commit}) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, state_root / STATE_MARK)


class SharedStateRefused(InvalidInput):
    """An untrusted apply was pointed at a state folder trusted applies use."""


def check_state_folder(
    context: TrustContext,
    state_root: Path,
    allow_shared: bool = False,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Refuse an untrusted apply against a state folder marked trusted: on a self-hosted
    runner that means the pull request's job got main's LLMOPS_STATE_DIR, and the branch's
    code would run with write access to what main promotes and deploys. The checkout's own
    `.llmops/` (a developer's working copy) is theirs to mix; `--allow-shared-state` (or
    LLMOPS_ALLOW_SHARED_STATE=1) says the sharing is meant (docs/architecture.md, "Trust
    boundary")."""
    env = os.environ if environ is None else environ
    allowed = allow_shared or env.get(ALLOW_SHARED_ENV, "").lower() in ("1", "true", "yes")
    if context.trusted or allowed or not state_marked_trusted(state_root):
        return
    if state_root.resolve().is_relative_to(context.root.resolve()):
        return
    raise SharedStateRefused(
        f"the state folder {state_root} is marked trusted (a trusted apply uses it: "
        f"{state_root / STATE_MARK}) and this apply is for the untrusted ref "
        f"'{context.ref}'; give pull requests their own LLMOPS_STATE_DIR and OS user "
        "(README, 'What a self-hosted runner must be set up like'), or pass "
        "--allow-shared-state if sharing main's state with this ref is meant"
    )


def accepts(
    context: TrustContext,
    provenance: Provenance | None,
    code: str,
    code_files: Mapping[str, str],
    source_root: Path | None = None,
) -> tuple[bool, str]:
    """Whether an apply in `context` may reuse a result with `provenance`; why not if not."""
    if provenance is None or provenance.trusted or not context.trusted:
        return True, ""
    where = f"produced on untrusted ref '{provenance.ref}'"
    if provenance.code != code:
        return False, f"{where} by other runner code"
    if not provenance.commit or not is_ancestor(context.root, provenance.commit):
        return False, f"{where} at a commit main does not contain"
    source = _source_in_repository(context.root, source_root)
    if source is not None:
        top, prefix = source
        for path, digest in code_files.items():
            if path.startswith("lib:"):
                continue
            data = blob_bytes(top, provenance.commit, f"{prefix}{path}")
            if data is None or hashlib.sha256(data).hexdigest() != digest:
                return False, f"{where}: {path} differed at {provenance.commit[:12]}"
    return True, ""


def _source_in_repository(root: Path, source_root: Path | None) -> tuple[Path, str] | None:
    top = top_level(root)
    if top is None:
        return None
    source = runners_source(source_root)
    try:
        relative = source.relative_to(top.resolve())
    except ValueError:
        return None  # installed outside the repository: a branch cannot change it
    prefix = relative.as_posix()
    return top, "" if prefix == "." else prefix + "/"
