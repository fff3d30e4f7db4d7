"""Registry upkeep: verify files against their digests, disk usage, garbage collection, and
removal of a version only when no deployment uses it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from controller.api import split_ref
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import Registry, RegistryError


def users_of(
    registry: Registry, version: VersionRow, references: Mapping[str, list[str]]
) -> list[str]:
    """The deployments using `version`: each maps to the model references it has (the one its
    spec names, which may be an alias, and the version the lock file says it serves)."""
    users = []
    for deployment, refs in sorted(references.items()):
        used = []
        for ref in refs:
            found = registry.find(ref)
            if _same(found, version):
                used.append(ref)
            elif found is not None and _adapter_on(found, version):
                # A LoRA adapter loads on its base: the base serves as long as it does.
                used.append(f"adapter {ref} on it")
        if used:
            users.append(f"{deployment} ({', '.join(dict.fromkeys(used))})")
    return users


def _same(found: VersionRow | None, version: VersionRow) -> bool:
    return found is not None and found.id == version.id


def _adapter_on(found: VersionRow, base: VersionRow) -> bool:
    """Whether `found` is an adapter-only version whose base is `base`."""
    return (
        found.lineage is not None
        and found.lineage.base_version_id == base.id
        and any(f.path == "adapter_config.json" for f in found.files)
    )


def remove_version(
    registry: Registry, ref: str, references: Mapping[str, list[str]], force: bool = False
) -> str:
    """Remove `name@N` (its blobs stay until garbage collection); refused while in use.
    Returns the version removed, as `name@N`."""
    name, selector = split_ref(ref)
    version = registry.find(ref)
    if version is None or selector is None:
        raise RegistryError(
            f"'{ref}' does not name a stored version; write name@version, see 'llmops models list'"
        )
    users = users_of(registry, version, references)
    if users and not force:
        raise RegistryError(
            f"{name}@{version.number} is used by deployment {', '.join(users)}; move the "
            "deployment to another version first, or pass --force"
        )
    registry.remove(name, version.number)
    return f"{name}@{version.number}"


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
    # versions trusted by default (no untrusted namespace tag) that record no provenance:
    # stored before provenance existed, or outside apply (`llmops models pull`)
    unproven: list[str] = field(default_factory=list)


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
            untrusted = any(t.key == "namespace" and t.value == "untrusted" for t in version.tags)
            if not untrusted and not (version.extra or {}).get("provenance"):
                report.unproven.append(ref)
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


# gc never deletes a blob younger than this: a writer outside apply (`llmops models pull`, a
# pipeline's training) stores its blobs first and registers them after, and its blobs are
# unreferenced until then. Longer than the longest pull or training run is safe.
GC_GRACE_S = 3600.0


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0
    kept_young: int = 0  # unreferenced, but written within the grace period
    tmp_removed: list[str] = field(default_factory=list)


def collect_garbage(
    registry: Registry, dry_run: bool = False, grace_s: float = GC_GRACE_S
) -> GcReport:
    """Delete blobs no version references (and their rows) once older than `grace_s`; keep
    everything referenced, and everything written recently (it may be about to be).

    The caller holds the apply mutex, so no apply registers meanwhile; writers outside apply
    are covered by the grace period: a put refreshes the blob's modification time even when
    the bytes were stored already, and the age is read again just before each deletion."""
    referenced = registry.referenced_blobs()
    report = GcReport()
    for blob in list(registry.blobs):
        if blob.sha256 in referenced:
            continue
        age = registry.blobs.age_s(blob.sha256)
        if age is None:
            continue  # deleted meanwhile by another gc
        if age < grace_s:
            report.kept_young += 1
            continue
        report.removed.append(blob.sha256)
        report.freed += blob.size
        if not dry_run:
            registry.blobs.delete(blob.sha256)
            registry.forget_blob(blob.sha256)
    if not dry_run:
        report.tmp_removed = registry.blobs.clean_tmp()
    return report
