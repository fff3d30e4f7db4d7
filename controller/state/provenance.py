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
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller.load.code import runners_source
from controller.state.git import (
    blob_bytes,
    current_branch,
    head_commit,
    is_ancestor,
    top_level,
)

PROTECTED_REFS_ENV = "LLMOPS_PROTECTED_REFS"
DEFAULT_PROTECTED = ("main", "master")
UNTRUSTED_NAMESPACE = "untrusted"  # the registry tag value results from untrusted refs carry


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
    return TrustContext(root, name, head_commit(root), trusted, protected)


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
