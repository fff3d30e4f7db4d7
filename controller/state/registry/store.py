"""Registry API: register versions over the blob store, resolve refs, aliases, metrics."""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from controller.state.artifacts.base import cache_max
from controller.state.artifacts.url import open_store
from controller.state.blobs import Blob, BlobStore
from controller.state.paths import StatePaths
from controller.state.registry.db import open_session_factory
from controller.state.registry.schema import (
    AliasRow,
    ArenaAnswerRow,
    BlobRow,
    DatasetRow,
    DatasetVersionRow,
    FileRow,
    LineageRow,
    MetricRow,
    ModelRow,
    ScanRow,
    TagRow,
    VersionRow,
)
from runners.errors import LlmopsError

VERSION_FIELDS = (
    "architecture",
    "model_type",
    "parameters",
    "dtype",
    "quantization",
    "context_length",
    "vocab_size",
    "license",
    "chat_template",
    "size_bytes",
)


REGISTER_ATTEMPTS = 20
TRUSTED, UNTRUSTED = "trusted", "untrusted"  # metric namespaces, as provenance.py names them


class RegistryError(LlmopsError):
    """A request the registry cannot satisfy; the message says what to do."""


@dataclass
class NewVersion:
    name: str
    files: list[tuple[str, Blob]]
    metadata: dict[str, Any]
    spec_digest: str | None = None
    source_key: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    trust_remote_code: bool = False
    lineage: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _eager() -> list[Any]:
    return [
        selectinload(VersionRow.files),
        selectinload(VersionRow.tags),
        selectinload(VersionRow.metrics),
        selectinload(VersionRow.lineage),
        selectinload(VersionRow.model).selectinload(ModelRow.aliases),
    ]


class Registry:
    def __init__(self, paths: StatePaths, sessions: sessionmaker[Session]) -> None:
        self.paths = paths
        self.sessions = sessions
        self.blobs = BlobStore(paths.blobs, open_store(paths.store_url), cache_max())

    @classmethod
    def open(cls, paths: StatePaths) -> Registry:
        return cls(paths, open_session_factory(paths.registry_url))

    @property
    def datasets(self) -> DatasetVersions:
        return DatasetVersions(self)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    # ----- reading -----------------------------------------------------------------------
    def models(self) -> list[ModelRow]:
        with self.sessions() as session:
            rows = session.scalars(
                select(ModelRow)
                .options(
                    selectinload(ModelRow.versions).options(*_eager()),
                    selectinload(ModelRow.aliases),
                )
                .order_by(ModelRow.name)
            ).all()
            return list(rows)

    def find(self, ref: str) -> VersionRow | None:
        """'name' (newest), 'name@3' (version 3) or 'name@alias'."""
        name, _, selector = ref.partition("@")
        with self.sessions() as session:
            model = session.scalar(select(ModelRow).where(ModelRow.name == name))
            if model is None:
                return None
            query = select(VersionRow).options(*_eager()).where(VersionRow.model_id == model.id)
            if not selector:
                query = query.order_by(VersionRow.number.desc()).limit(1)
            elif selector.isdigit():
                query = query.where(VersionRow.number == int(selector))
            else:
                alias = session.scalar(
                    select(AliasRow).where(AliasRow.model_id == model.id, AliasRow.name == selector)
                )
                if alias is None:
                    return None
                query = query.where(VersionRow.id == alias.version_id)
            return session.scalar(query)

    def find_by(
        self, name: str, *, spec_digest: str | None = None, source_key: str | None = None
    ) -> VersionRow | None:
        with self.sessions() as session:
            query = (
                select(VersionRow).options(*_eager()).join(ModelRow).where(ModelRow.name == name)
            )
            if spec_digest:
                query = query.where(VersionRow.spec_digest == spec_digest)
            if source_key:
                query = query.where(VersionRow.source_key == source_key)
            return session.scalar(query.order_by(VersionRow.number.desc()).limit(1))

    def all_by(self, name: str, spec_digest: str) -> list[VersionRow]:
        """Every version of `name` stored under `spec_digest`, newest first."""
        with self.sessions() as session:
            query = (
                select(VersionRow)
                .options(*_eager())
                .join(ModelRow)
                .where(ModelRow.name == name, VersionRow.spec_digest == spec_digest)
            )
            return list(session.scalars(query.order_by(VersionRow.number.desc())).all())

    def version_digests(self) -> dict[str, list[tuple[int, str | None]]]:
        """Model name -> [(version, spec digest)], for the observe layer."""
        with self.sessions() as session:
            rows = session.execute(
                select(ModelRow.name, VersionRow.number, VersionRow.spec_digest)
                .join(VersionRow, VersionRow.model_id == ModelRow.id)
                .order_by(ModelRow.name, VersionRow.number)
            ).all()
        out: dict[str, list[tuple[int, str | None]]] = {}
        for name, number, digest in rows:
            out.setdefault(name, []).append((number, digest))
        return out

    def run_digests(self) -> dict[str, list[str]]:
        """'Experiment/<experiment>/<run>' -> spec digests of the versions its training made."""
        out: dict[str, list[str]] = {}
        for model in self.models():
            for version in model.versions:
                tags = {t.key: t.value for t in version.tags}
                if "experiment" in tags and "run" in tags and version.spec_digest:
                    address = f"Experiment/{tags['experiment']}/{tags['run']}"
                    out.setdefault(address, []).append(version.spec_digest)
        return out

    def evaluated(self, trusted_only: bool = False) -> set[tuple[str, str]]:
        """(version spec digest, suite digest) pairs that have evaluation metrics; with
        `trusted_only`, only metrics a trusted ref wrote (what main may count as done)."""
        query = (
            select(VersionRow.spec_digest, MetricRow.suite_digest)
            .join(MetricRow, MetricRow.version_id == VersionRow.id)
            .where(MetricRow.suite != "training")
        )
        if trusted_only:
            query = query.where(MetricRow.namespace == TRUSTED)
        with self.sessions() as session:
            rows = session.execute(query.distinct()).all()
        return {(a, b) for a, b in rows if a and b}

    def has_files(self, version: VersionRow) -> bool:
        return all(self.blobs.exists(f.sha256, f.size) for f in version.files)

    # ----- writing -----------------------------------------------------------------------
    def register(self, new: NewVersion) -> VersionRow:
        """One transaction: the model row, the version, its files, aliases, tags, lineage.

        Two processes registering the same model at once race for its next number (or for the
        model row); the loser's transaction is rolled back and tried again, so concurrent
        writers all get a version (tests/integration/test_registry_concurrency.py).
        """
        for _, blob in new.files:
            if not self.blobs.exists(blob.sha256, blob.size):
                raise RegistryError(f"blob {blob.sha256[:12]} is not in the store")
        for attempt in range(REGISTER_ATTEMPTS):
            try:
                return self._register_once(new)
            except (IntegrityError, OperationalError) as err:
                text = str(err.orig).lower()
                raced = "unique" in text or "duplicate key" in text or "locked" in text
                if not raced or attempt == REGISTER_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise AssertionError("unreachable")

    def _register_once(self, new: NewVersion) -> VersionRow:
        with self.session() as session:
            model = session.scalar(select(ModelRow).where(ModelRow.name == new.name))
            if model is None:
                model = ModelRow(name=new.name, description=new.description)
                session.add(model)
                session.flush()
            elif new.description:
                model.description = new.description
            number = (
                session.scalar(
                    select(func.max(VersionRow.number)).where(VersionRow.model_id == model.id)
                )
                or 0
            ) + 1
            version = VersionRow(
                model_id=model.id,
                number=number,
                spec_digest=new.spec_digest,
                source_key=new.source_key,
                source=new.source,
                trust_remote_code=new.trust_remote_code,
                extra={k: v for k, v in new.metadata.items() if k not in VERSION_FIELDS},
                **{k: new.metadata.get(k) for k in VERSION_FIELDS if k != "chat_template"},
                chat_template=bool(new.metadata.get("chat_template")),
            )
            if version.size_bytes is None:
                version.size_bytes = sum(b.size for _, b in new.files)
            session.add(version)
            session.flush()
            for path, blob in new.files:
                if session.get(BlobRow, blob.sha256) is None:
                    session.add(BlobRow(sha256=blob.sha256, size=blob.size))
                session.add(
                    FileRow(version_id=version.id, path=path, sha256=blob.sha256, size=blob.size)
                )
            for key, value in new.tags.items():
                session.add(TagRow(version_id=version.id, key=key, value=value))
            if new.lineage:
                session.add(LineageRow(version_id=version.id, **new.lineage))
            session.flush()
            for alias in new.aliases:
                self._set_alias(session, model, alias, version)
            version_id = version.id
        found = self.by_id(version_id)
        assert found is not None
        return found

    def by_id(self, version_id: int) -> VersionRow | None:
        with self.sessions() as session:
            return session.scalar(
                select(VersionRow).options(*_eager()).where(VersionRow.id == version_id)
            )

    @staticmethod
    def _set_alias(session: Session, model: ModelRow, alias: str, version: VersionRow) -> None:
        row = session.get(AliasRow, (model.id, alias))
        if row is None:
            session.add(AliasRow(model_id=model.id, name=alias, version_id=version.id))
        else:
            row.version_id = version.id
            row.updated_at = func.now()

    def set_alias(self, name: str, alias: str, number: int) -> None:
        with self.session() as session:
            version = session.scalar(
                select(VersionRow)
                .join(ModelRow)
                .where(ModelRow.name == name, VersionRow.number == number)
            )
            if version is None:
                raise RegistryError(f"{name}@{number} does not exist")
            self._set_alias(session, version.model, alias, version)

    def set_card(self, version_id: int, card: str) -> None:
        with self.session() as session:
            row = session.get(VersionRow, version_id)
            if row is not None:
                row.card = card

    def add_metrics(
        self,
        version_id: int,
        suite: str,
        suite_digest: str,
        values: dict[str, float],
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        """Store measured values with who produced them (`provenance`: commit, code, ref and
        trusted, as controller/state/provenance.py records it; none: a trusted caller such as
        `llmops eval` or the pipeline, which run main's code)."""
        recorded = provenance or {}
        trusted = not recorded or bool(recorded.get("trusted"))
        with self.session() as session:
            for name, value in values.items():
                if value is None or value != value:  # missing or NaN: nothing was measured
                    continue
                session.add(
                    MetricRow(
                        version_id=version_id,
                        suite=suite,
                        suite_digest=suite_digest,
                        name=name,
                        value=float(value),
                        namespace=TRUSTED if trusted else UNTRUSTED,
                        code_digest=recorded.get("code") or None,
                        git_commit=recorded.get("commit"),
                        ref=recorded.get("ref"),
                    )
                )

    def remove(self, name: str, number: int) -> VersionRow:
        with self.session() as session:
            version = session.scalar(
                select(VersionRow)
                .options(*_eager())
                .join(ModelRow)
                .where(ModelRow.name == name, VersionRow.number == number)
            )
            if version is None:
                raise RegistryError(f"{name}@{number} does not exist")
            model = version.model
            session.delete(version)
            session.flush()
            if not session.scalar(
                select(func.count()).select_from(VersionRow).where(VersionRow.model_id == model.id)
            ):
                session.delete(model)
        shutil.rmtree(self.paths.views / name / str(number), ignore_errors=True)
        return version

    def referenced_blobs(self) -> set[str]:
        """Blobs a model version, an arena answer or a scan still needs."""
        with self.sessions() as session:
            found = set(session.scalars(select(FileRow.sha256).distinct()).all())
            found |= set(session.scalars(select(ArenaAnswerRow.sha256)).all())
            for files in session.scalars(select(ScanRow.files)).all():
                found |= set(files.values())
            return found

    def forget_blob(self, sha256: str) -> None:
        with self.session() as session:
            row = session.get(BlobRow, sha256)
            if row is not None:
                session.delete(row)

    # ----- files on disk -----------------------------------------------------------------
    def materialize(self, version: VersionRow) -> Path:
        """A folder of symlinks into the blob store that transformers can load.

        Every blob is checked against its recorded sha256 first (BlobStore.check: hashed once,
        then by size, mtime and inode), so a weight file changed after it was registered is
        refused rather than loaded. An adapter-only version brings its base version's folder
        with it: its adapter_config.json names that folder (`../../<base>/<number>`).
        """
        folder = self.paths.views / version.model.name / str(version.number)
        if version.lineage and any(f.path == "adapter_config.json" for f in version.files):
            base_id = version.lineage.base_version_id  # None once the base was removed
            base = self.by_id(base_id) if base_id is not None else None
            if base is None:
                raise RegistryError(
                    f"{version.model.name}@{version.number} is a LoRA adapter whose base "
                    "version was removed; pull or train that base again, or retrain the adapter"
                )
            self.materialize(base)
        for f in version.files:
            problem = self.blobs.check(f.sha256, f.size)
            if problem:
                raise RegistryError(
                    f"{version.model.name}@{version.number}: file {f.path} (sha256:"
                    f"{f.sha256[:12]}) is {problem}; refusing to load a changed model file. "
                    "Run 'llmops models verify', then pull or train the version again"
                )
        if folder.is_dir() and all(
            self._links_to(folder / f.path, f.sha256) for f in version.files
        ):
            return folder
        tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for file in version.files:
            link = tmp / file.path
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(self.blobs.path(file.sha256), link.parent))
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
        return folder

    def _links_to(self, link: Path, sha256: str) -> bool:
        try:
            return link.is_symlink() and link.resolve() == self.blobs.path(sha256).resolve()
        except OSError:
            return False


class DatasetVersions:
    """Prepared dataset versions: content digest, the inputs digest that produced it, stats."""

    def __init__(self, registry: Registry) -> None:
        self.sessions = registry.sessions

    def by_resource(self, name: str, resource_digest: str) -> DatasetVersionRow | None:
        with self.sessions() as session:
            return session.scalar(
                select(DatasetVersionRow)
                .join(DatasetRow)
                .where(
                    DatasetRow.name == name, DatasetVersionRow.resource_digest == resource_digest
                )
                .order_by(DatasetVersionRow.id.desc())
                .limit(1)
            )

    def find(self, ref: str) -> DatasetVersionRow | None:
        """'name' (newest) or 'name@<digest prefix>'."""
        name, _, selector = ref.partition("@")
        with self.sessions() as session:
            query = (
                select(DatasetVersionRow)
                .join(DatasetRow)
                .where(DatasetRow.name == name)
                .options(selectinload(DatasetVersionRow.dataset))
            )
            if selector:
                prefix = selector if selector.startswith("sha256:") else f"sha256:{selector}"
                query = query.where(DatasetVersionRow.version.startswith(prefix))
            return session.scalar(query.order_by(DatasetVersionRow.id.desc()).limit(1))

    def observed(self) -> dict[str, list[dict[str, Any]]]:
        """Dataset name -> versions (oldest first) with the inputs digest that made each."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.sessions() as session:
            rows = session.execute(
                select(
                    DatasetRow.name,
                    DatasetVersionRow.version,
                    DatasetVersionRow.resource_digest,
                    DatasetVersionRow.stats,
                )
                .join(DatasetVersionRow)
                .order_by(DatasetVersionRow.id)
            ).all()
        for name, version, digest, stats in rows:
            recorded = (stats or {}).get("resource", {})
            out.setdefault(name, []).append(
                {
                    "version": version,
                    "resource_digest": digest,
                    "spec": recorded.get("spec"),
                    "inputs": recorded.get("inputs"),
                    "code_version": recorded.get("code_version"),
                }
            )
        return out

    def history(self, name: str) -> list[DatasetVersionRow]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(DatasetVersionRow)
                    .join(DatasetRow)
                    .where(DatasetRow.name == name)
                    .order_by(DatasetVersionRow.id)
                ).all()
            )

    def add(
        self,
        name: str,
        version: str,
        resource_digest: str,
        rows: dict[str, int],
        stats: dict[str, Any],
        dvc_md5: str | None,
    ) -> DatasetVersionRow:
        with self.sessions() as session, session.begin():
            dataset = session.scalar(select(DatasetRow).where(DatasetRow.name == name))
            if dataset is None:
                dataset = DatasetRow(name=name)
                session.add(dataset)
                session.flush()
            row = session.scalar(
                select(DatasetVersionRow).where(
                    DatasetVersionRow.dataset_id == dataset.id, DatasetVersionRow.version == version
                )
            )
            if row is None:
                row = DatasetVersionRow(
                    dataset_id=dataset.id,
                    version=version,
                    resource_digest=resource_digest,
                    rows=rows,
                    stats=stats,
                    dvc_md5=dvc_md5,
                )
                session.add(row)
            else:  # same content from other inputs: remember the newest inputs
                row.resource_digest = resource_digest
                row.stats = stats
                row.dvc_md5 = dvc_md5 or row.dvc_md5
            session.flush()
            return row
