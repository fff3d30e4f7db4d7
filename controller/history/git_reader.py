"""History, reading git: each commit's spec documents and lock entries for one resource."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.api import KINDS as SPEC_KINDS
from controller.history.changes import (
    Change,
    EntryDiff,
    Evidence,
    FieldChange,
    HistoryError,
    Served,
    Target,
    change_kind,
    diff_entry,
    diff_fields,
    evidence,
    landings,
    match_resource,
    pr_number,
    served,
    unknown_message,
)
from controller.load.yaml_source import parse_documents
from controller.plan.digest import canonical_json
from controller.state.lockfile import LOCK_FILE, LockFileError, parse_lock

if TYPE_CHECKING:
    from git import Blob, Commit, Tree


@dataclass(frozen=True)
class CommitInfo:
    commit: str
    short: str
    author: str
    email: str
    date: str
    subject: str
    pr: int | None
    merged_in: str | None = None  # the merge commit that brought a branch commit in


@dataclass(frozen=True)
class ResourceChange:
    """One commit's change to the resource, and what the lock recorded for it afterwards."""

    address: str
    commit: CommitInfo
    spec_file: str | None
    spec_change: Change | None
    spec: list[FieldChange]
    entries: list[EntryDiff]
    evidence: list[Evidence]
    served: Served | None
    in_lock: bool


@dataclass(frozen=True)
class Snapshot:
    """The resource as of one commit: its lock entries, what it served, its last change."""

    address: str
    commit: CommitInfo
    spec_file: str | None
    entries: dict[str, dict[str, Any]]
    evidence: list[Evidence]
    served: Served | None
    last_change: ResourceChange | None


@dataclass(frozen=True)
class _State:
    spec_file: str | None
    document: dict[str, Any] | None
    entries: dict[str, dict[str, Any]]
    resources: dict[str, dict[str, Any]]

    def same(self, other: _State) -> bool:
        return canonical_json([self.document, self.entries]) == canonical_json(
            [other.document, other.entries]
        )


_EMPTY = _State(None, None, {}, {})
_SPEC_SUFFIXES = (".yaml", ".yml")


class GitHistory:
    """Resource history of the git repository holding `root` (the folder with specs/)."""

    def __init__(self, root: Path) -> None:
        try:
            from git import InvalidGitRepositoryError, NoSuchPathError, Repo
        except ImportError as err:  # GitPython raises this when no git executable is found
            raise HistoryError(f"git cannot be run: {err}; install git") from err
        try:
            self.repo: Repo = Repo(root, search_parent_directories=True)
        except (InvalidGitRepositoryError, NoSuchPathError) as err:
            raise HistoryError(
                f"{root} is not in a git repository; history is read from git, "
                "so run this in a clone of the spec repository"
            ) from err
        if self.repo.working_tree_dir is None:
            raise HistoryError(f"{root} is a bare git repository; run this in a clone")
        top = Path(self.repo.working_tree_dir).resolve()
        try:
            inner = root.resolve().relative_to(top).as_posix()
        except ValueError as err:
            raise HistoryError(f"{root} is outside its git work tree {top}") from err
        self.prefix = "" if inner == "." else inner + "/"
        if not self.repo.head.is_valid():
            raise HistoryError("the git repository has no commits yet; commit the specs first")
        self.shallow = (Path(self.repo.git_dir) / "shallow").exists()
        self.warnings: list[str] = []
        self._locks: dict[str, dict[str, dict[str, Any]]] = {}
        self._docs: dict[str, list[dict[str, Any]]] = {}
        self._found: dict[tuple[str, str, str], tuple[str, dict[str, Any]] | None] = {}
        self._states: dict[tuple[str, str], _State] = {}
        self._landings: dict[str, dict[str, str]] = {}

    # -- questions --

    def commit(self, rev: str) -> Commit:
        from git import BadName, GitCommandError

        try:
            return self.repo.commit(rev)
        except (BadName, ValueError, GitCommandError) as err:
            raise HistoryError(
                f"unknown commit '{rev}'; give a sha, branch, tag or HEAD~n ('git log' lists them)"
            ) from err

    def resolve(self, text: str, commit: Commit) -> Target:
        """The resource `text` names at `commit`, or among every address in its lock history."""
        known = self._addresses(commit)
        address = match_resource(text, known)
        if address is None:
            for older in self.repo.iter_commits(commit.hexsha, paths=self.prefix + LOCK_FILE):
                known |= set(self._lock(older))
            address = match_resource(text, known)
        if address is None:
            raise HistoryError(unknown_message(text, known))
        return Target(address)

    def changes(self, target: Target, commit: Commit) -> Iterator[ResourceChange]:
        """Each commit reachable from `commit` that changed the resource, newest first."""
        paths = [self.prefix + LOCK_FILE, self.prefix + "specs"]
        for candidate in self.repo.iter_commits(commit.hexsha, paths=paths):
            after = self._state(candidate, target)
            befores = [self._state(p, target) for p in candidate.parents] or [_EMPTY]
            # A merge that took the resource from one side unchanged is not a change of its own.
            if any(after.same(before) for before in befores):
                continue
            yield self._change(candidate, befores[0], after, target, commit)

    def at(self, target: Target, commit: Commit) -> Snapshot:
        state = self._state(commit, target)
        return Snapshot(
            address=target.address,
            commit=self._info(commit, commit),
            spec_file=state.spec_file,
            entries=state.entries,
            evidence=_evidence(state.entries),
            served=self._approved(served(state.resources, target.address), commit),
            last_change=next(self.changes(target, commit), None),
        )

    # -- reading one commit --

    def _change(
        self, commit: Commit, before: _State, after: _State, target: Target, head: Commit
    ) -> ResourceChange:
        spec_change = None
        if before.document != after.document:
            spec_change = change_kind(before.document, after.document)
        entries = [
            diff
            for address in sorted(before.entries.keys() | after.entries.keys())
            if (
                diff := diff_entry(address, before.entries.get(address), after.entries.get(address))
            )
        ]
        return ResourceChange(
            address=target.address,
            commit=self._info(commit, head),
            spec_file=after.spec_file or before.spec_file,
            spec_change=spec_change,
            spec=diff_fields(before.document, after.document),
            entries=entries,
            evidence=_evidence(after.entries),
            served=self._approved(served(after.resources, target.address), head),
            in_lock=bool(after.entries),
        )

    def _approved(self, found: Served | None, head: Commit) -> Served | None:
        """Each collected window's pull request: the one whose commit first named it."""
        if found is None or not any(item.collected for item in found.lineage):
            return found
        items = []
        for item in found.lineage:
            pr = None
            for path in item.collected:
                shas = self.repo.git.log(
                    "--format=%H",
                    "--reverse",
                    f"-S{path}",
                    head.hexsha,
                    "--",
                    self.prefix + "specs",
                ).split()
                if shas:
                    pr = self._info(self.repo.commit(shas[0]), head).pr or pr
            items.append(replace(item, approved_in=pr))
        return replace(found, lineage=items)

    def _info(self, commit: Commit, head: Commit) -> CommitInfo:
        subject = _text(commit.summary)
        pr, merged_in = pr_number(subject), None
        landed = self._landed(head).get(commit.hexsha, commit.hexsha)
        if landed != commit.hexsha:
            merge = self.repo.commit(landed)
            merged_in = landed
            pr = pr_number(_text(merge.summary)) or pr
        return CommitInfo(
            commit=commit.hexsha,
            short=commit.hexsha[:7],
            author=str(commit.author.name),
            email=str(commit.author.email),
            date=commit.authored_datetime.isoformat(),
            subject=subject,
            pr=pr,
            merged_in=merged_in,
        )

    def _landed(self, head: Commit) -> dict[str, str]:
        if head.hexsha not in self._landings:
            graph: dict[str, tuple[str, ...]] = {}
            for line in self.repo.git.rev_list("--parents", head.hexsha).splitlines():
                commit, *parents = line.split()
                graph[commit] = tuple(parents)
            self._landings[head.hexsha] = landings(graph, head.hexsha)
        return self._landings[head.hexsha]

    def _state(self, commit: Commit, target: Target) -> _State:
        key = (commit.hexsha, target.address)
        if key not in self._states:
            resources = self._lock(commit)
            found = self._document(commit, *target.document)
            self._states[key] = _State(
                spec_file=found[0] if found else None,
                document=found[1] if found else None,
                entries={a: e for a, e in resources.items() if target.tracks(a)},
                resources=resources,
            )
        return self._states[key]

    def _lock(self, commit: Commit) -> dict[str, dict[str, Any]]:
        """The lock's resources at `commit`, migrated to the current schema and as JSON, so
        entries of any age compare alike; {} when absent or unreadable (with a warning)."""
        try:
            blob = commit.tree / (self.prefix + LOCK_FILE)
        except KeyError:
            return {}
        if blob.hexsha not in self._locks:
            resources: dict[str, dict[str, Any]] = {}
            try:
                text = blob.data_stream.read().decode("utf-8")
                resources = parse_lock(text).as_json()["resources"]
            except UnicodeDecodeError as err:
                self.warnings.append(f"{commit.hexsha[:7]}: {LOCK_FILE} is not text ({err})")
            except LockFileError as err:
                found = err.diagnostic
                where = f"line {found.line}" + (f", {found.path}" if found.path else "")
                self.warnings.append(
                    f"{commit.hexsha[:7]}: {LOCK_FILE} is unusable ({where}: {found.message})"
                )
            self._locks[blob.hexsha] = resources
        return self._locks[blob.hexsha]

    def _specs_tree(self, commit: Commit) -> Tree | None:
        try:
            return commit.tree / (self.prefix + "specs")
        except KeyError:
            return None

    def _document(self, commit: Commit, kind: str, name: str) -> tuple[str, dict[str, Any]] | None:
        """(file, document) declaring kind/name; its kind's folder first, then all of specs/."""
        specs = self._specs_tree(commit)
        if specs is None:
            return None
        folder = SPEC_KINDS[kind].FOLDER
        # Most documents live in `<folder>/<name>.yaml`: read that file before searching.
        for suffix in _SPEC_SUFFIXES:
            blob = _child(specs, f"{folder}/{name}{suffix}")
            if blob is not None and blob.type == "blob":
                found = next(self._matching(self._parsed(blob), kind, name), None)
                if found is not None:
                    return found
        subtree = _child(specs, folder)
        trees = [subtree] if subtree is not None and subtree.type == "tree" else []
        for tree in [*trees, specs]:
            key = (tree.hexsha, kind, name)
            if key not in self._found:
                self._found[key] = next(self._matching(self._documents(tree), kind, name), None)
            if self._found[key] is not None:
                return self._found[key]
        return None

    def _documents(self, tree: Tree) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every spec document under `tree`, skipping `_presets`-style and hidden folders."""
        for item in tree.traverse(
            predicate=lambda i, _d: i.type == "blob" and i.path.endswith(_SPEC_SUFFIXES),
            prune=lambda i, _d: i.type == "tree" and i.name.startswith(("_", ".")),
        ):
            yield from self._parsed(item)

    def _parsed(self, blob: Blob) -> Iterator[tuple[str, dict[str, Any]]]:
        """(file, document) for each document of one spec file; parsed once per content."""
        if blob.hexsha not in self._docs:
            try:
                text = blob.data_stream.read().decode("utf-8")
            except UnicodeDecodeError:
                text = ""
            parsed, _ = parse_documents(text, blob.path)
            self._docs[blob.hexsha] = [d.data for d in parsed if isinstance(d.data, dict)]
        shown = blob.path.removeprefix(self.prefix)
        for doc in self._docs[blob.hexsha]:
            yield shown, doc

    @staticmethod
    def _matching(
        documents: Iterable[tuple[str, dict[str, Any]]], kind: str, name: str
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        return ((p, d) for p, d in documents if d.get("kind") == kind and _name(d) == name)

    def _addresses(self, commit: Commit) -> set[str]:
        known = set(self._lock(commit))
        specs = self._specs_tree(commit)
        if specs is not None:
            for _, doc in self._documents(specs):
                if doc.get("kind") in SPEC_KINDS and isinstance(_name(doc), str):
                    known.add(f"{doc['kind']}/{_name(doc)}")
        return known


def _child(tree: Tree, path: str) -> Any:
    """The object at `path` under `tree`, or None (`in` on a GitPython tree wants full paths)."""
    try:
        return tree / path
    except KeyError:
        return None


def _name(doc: Mapping[str, Any]) -> Any:
    metadata = doc.get("metadata")
    return metadata.get("name") if isinstance(metadata, dict) else None


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _evidence(entries: Mapping[str, Mapping[str, Any]]) -> list[Evidence]:
    return [e for a in sorted(entries) if (e := evidence(a, entries[a])) is not None]


def history(
    root: Path, resource: str, rev: str = "HEAD", limit: int | None = None
) -> tuple[Target, list[ResourceChange], GitHistory]:
    """The resource's changes reachable from `rev`, newest first (at most `limit`)."""
    git = GitHistory(root)
    start = git.commit(rev)
    target = git.resolve(resource, start)
    found = []
    for change in git.changes(target, start):
        found.append(change)
        if limit is not None and len(found) >= limit:
            break
    return target, found, git


def snapshot(root: Path, resource: str, rev: str) -> tuple[Snapshot, GitHistory]:
    """The resource as of `rev`: which model a deployment served then, with its metrics."""
    git = GitHistory(root)
    start = git.commit(rev)
    return git.at(git.resolve(resource, start), start), git
