"""Apply, model pull: a Model spec -> a registry version, fetched once and stored by digest."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from controller.api import split_ref
from controller.api.model import ExperimentSource, ModelSpec, QuantizedSource
from controller.apply.quantize import quantize_model
from controller.plan.types import DesiredResource
from controller.report.model_card import render_card
from controller.state.blobs import Blob
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import VERSION_FIELDS, NewVersion, Registry
from runners.pull import FetchOptions, PullError, fetch, source_key

if TYPE_CHECKING:
    from controller.apply.evaluate import Evaluator


@dataclass
class PullOutcome:
    status: Literal["present", "linked", "imported"]
    version: VersionRow

    @property
    def ref(self) -> str:
        return f"{self.version.model.name}@{self.version.number}"


def pull_model(
    resource: DesiredResource,
    registry: Registry,
    repo_root: Path,
    console: Console,
    force: bool = False,
    evaluator: Evaluator | None = None,
) -> PullOutcome:
    """Import the model unless a version with this spec digest is already stored intact.

    A version whose source and dtype match (only metadata such as aliases changed) becomes a
    new version over the same blobs without fetching anything.
    """
    spec = resource.spec_as(ModelSpec)
    if isinstance(spec.source, QuantizedSource):
        status, derived = quantize_model(resource, registry, repo_root, console, force, evaluator)
        return PullOutcome(status, derived)
    source = spec.source.model_dump(mode="json")  # what the runner fetches, and its key
    name = resource.name
    if isinstance(spec.source, ExperimentSource):
        raise PullError(
            f"{name} is produced by experiment '{spec.source.experiment}'; "
            "it is registered when that run trains, not pulled"
        )
    if not force:
        existing = registry.find_by(name, spec_digest=resource.digest)
        if existing is not None and registry.has_files(existing):
            registry.materialize(existing)
            return PullOutcome("present", existing)
    key = source_key(source, spec.dtype)
    same_bytes = None if force else registry.find_by(name, source_key=key)
    if same_bytes is not None and registry.has_files(same_bytes):
        files = [(f.path, Blob(f.sha256, f.size)) for f in same_bytes.files]
        metadata = {k: getattr(same_bytes, k) for k in VERSION_FIELDS}
        metadata.update(same_bytes.extra)
        if spec.license:
            metadata["license"] = spec.license
        return _register(registry, resource, key, files, metadata, "linked")

    work = registry.paths.work / f"pull-{name}"
    options = FetchOptions(
        repo_root=repo_root,
        dtype=spec.dtype,
        allow_pickle=spec.allow_pickle,
        trust_remote_code=spec.trust_remote_code,
        license=spec.license,
        report=lambda text: console.print(f"  {text}"),
    )
    try:
        result = fetch(source, work / "files", options)
        files = _store(registry, result.folder, console)
        return _register(registry, resource, key, files, result.metadata, "imported")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        registry.blobs.clean_tmp()


def _store(registry: Registry, folder: Path, console: Console) -> list[tuple[str, Blob]]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in paths)
    stored: list[tuple[str, Blob]] = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("storing files", total=total)
        for path in paths:
            blob = registry.blobs.put(path, progress=lambda n: progress.advance(task, n))
            stored.append((path.relative_to(folder).as_posix(), blob))
    return stored


def _register(
    registry: Registry,
    resource: DesiredResource,
    key: str,
    files: list[tuple[str, Blob]],
    metadata: dict[str, Any],
    status: Literal["linked", "imported"],
) -> PullOutcome:
    spec = resource.spec_as(ModelSpec)
    version = registry.register(
        NewVersion(
            name=resource.name,
            files=files,
            metadata=metadata,
            spec_digest=resource.digest,
            source_key=key,
            source=spec.source.model_dump(mode="json"),
            aliases=list(spec.aliases),
            description=spec.description,
            trust_remote_code=spec.trust_remote_code,
        )
    )
    registry.set_card(version.id, render_card(version))
    version = registry.find(f"{resource.name}@{version.number}") or version
    registry.materialize(version)
    return PullOutcome(status, version)


def ensure_model(
    ref: str,
    desired: dict[str, DesiredResource],
    registry: Registry,
    repo_root: Path,
    console: Console,
) -> tuple[VersionRow, Path]:
    """The registered version a reference names, pulling its Model spec first if needed."""
    version = registry.find(ref)
    if version is None:
        name = split_ref(ref)[0]
        resource = desired.get(f"Model/{name}")
        if resource is None or isinstance(resource.spec_as(ModelSpec).source, ExperimentSource):
            raise PullError(f"model '{ref}' is not in the registry; train or pull it first")
        console.print(f"  pulling {name}")
        pull_model(resource, registry, repo_root, console)
        version = registry.find(ref)
        if version is None:
            raise PullError(f"model '{ref}' is not in the registry after pulling {name}")
    return version, registry.materialize(version)
