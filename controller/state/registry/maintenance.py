"""Registry upkeep: verify files against their digests, disk usage, garbage collection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from controller.state.registry.store import Registry


@dataclass
class Problem:
    ref: str
    path: str
    problem: str


@dataclass
class VerifyReport:
    checked_files: int = 0
    checked_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


def verify(
    registry: Registry,
    names: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Re-hash every blob a version uses (once per blob) and check every view link."""
    report = VerifyReport()
    verdicts: dict[str, bool] = {}
    for model in registry.models():
        if names and model.name not in names:
            continue
        for version in model.versions:
            ref = f"{model.name}@{version.number}"
            for file in version.files:
                if file.sha256 not in verdicts:
                    exists = registry.blobs.exists(file.sha256, file.size)
                    verdicts[file.sha256] = exists and registry.blobs.verify(file.sha256, progress)
                    report.checked_files += 1
                    report.checked_bytes += file.size
                if not registry.blobs.exists(file.sha256):
                    report.problems.append(Problem(ref, file.path, "missing from the blob store"))
                elif not verdicts[file.sha256]:
                    report.problems.append(
                        Problem(ref, file.path, "content does not match its sha256")
                    )
            view = registry.paths.views / model.name / str(version.number)
            if view.is_dir():
                for file in version.files:
                    link = view / file.path
                    if (
                        not link.exists()
                        or link.resolve() != registry.blobs.path(file.sha256).resolve()
                    ):
                        report.problems.append(
                            Problem(
                                ref, file.path, "view link broken; 'llmops models pull' rebuilds it"
                            )
                        )
    return report


@dataclass
class Usage:
    ref: str
    files: int
    size: int
    unique: int  # bytes no other version shares


def disk_usage(registry: Registry) -> tuple[list[Usage], int, int]:
    """Per version: logical size and bytes only it uses; plus stored and logical totals."""
    users: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    versions = []
    for model in registry.models():
        for version in model.versions:
            ref = f"{model.name}@{version.number}"
            versions.append((ref, version))
            for file in version.files:
                users.setdefault(file.sha256, set()).add(ref)
                sizes[file.sha256] = file.size
    rows = []
    for ref, version in versions:
        shas = {f.sha256 for f in version.files}
        rows.append(
            Usage(
                ref=ref,
                files=len(version.files),
                size=sum(f.size for f in version.files),
                unique=sum(sizes[s] for s in shas if users[s] == {ref}),
            )
        )
    stored = sum(sizes.values())
    logical = sum(r.size for r in rows)
    return rows, stored, logical


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0


def collect_garbage(registry: Registry, dry_run: bool = False) -> GcReport:
    """Delete blobs no version references (and their rows); keep everything referenced."""
    referenced = registry.referenced_blobs()
    report = GcReport()
    for blob in list(registry.blobs):
        if blob.sha256 in referenced:
            continue
        report.removed.append(blob.sha256)
        report.freed += blob.size
        if not dry_run:
            registry.blobs.delete(blob.sha256)
            registry.forget_blob(blob.sha256)
    if not dry_run:
        registry.blobs.clean_tmp()
    return report
