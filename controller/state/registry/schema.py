"""Registry tables (SQLAlchemy 2 ORM); alembic migrations in migrations/ create them."""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    versions: Mapped[list[VersionRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="VersionRow.number"
    )
    aliases: Mapped[list[AliasRow]] = relationship(
        back_populates="model", cascade="all, delete-orphan"
    )


class BlobRow(Base):
    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class VersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_version_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    spec_digest: Mapped[str | None] = mapped_column(String(80), index=True)
    source_key: Mapped[str | None] = mapped_column(String(80), index=True)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    architecture: Mapped[str | None] = mapped_column(String(128))
    model_type: Mapped[str | None] = mapped_column(String(64))
    parameters: Mapped[int | None] = mapped_column(BigInteger)
    dtype: Mapped[str | None] = mapped_column(String(32))
    quantization: Mapped[str | None] = mapped_column(String(64))
    context_length: Mapped[int | None] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    license: Mapped[str | None] = mapped_column(String(64))
    chat_template: Mapped[bool] = mapped_column(Boolean, default=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    trust_remote_code: Mapped[bool] = mapped_column(Boolean, default=False)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    card: Mapped[str] = mapped_column(Text, default="")

    model: Mapped[ModelRow] = relationship(back_populates="versions")
    files: Mapped[list[FileRow]] = relationship(
        back_populates="version", cascade="all, delete-orphan", order_by="FileRow.path"
    )
    tags: Mapped[list[TagRow]] = relationship(
        back_populates="version", cascade="all, delete-orphan"
    )
    metrics: Mapped[list[MetricRow]] = relationship(
        back_populates="version", cascade="all, delete-orphan"
    )
    lineage: Mapped[LineageRow | None] = relationship(
        back_populates="version",
        cascade="all, delete-orphan",
        uselist=False,
        foreign_keys="LineageRow.version_id",
    )


class FileRow(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(512), primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)

    version: Mapped[VersionRow] = relationship(back_populates="files")


class AliasRow(Base):
    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    model: Mapped[ModelRow] = relationship(back_populates="aliases")
    version: Mapped[VersionRow] = relationship()


class TagRow(Base):
    __tablename__ = "tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(512), default="")

    version: Mapped[VersionRow] = relationship(back_populates="tags")


class LineageRow(Base):
    __tablename__ = "lineage"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    dataset_version: Mapped[str | None] = mapped_column(String(128))
    experiment_run: Mapped[str | None] = mapped_column(String(256))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    config_digest: Mapped[str | None] = mapped_column(String(80))
    packages: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seeds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    version: Mapped[VersionRow] = relationship(back_populates="lineage", foreign_keys=[version_id])


class MetricRow(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    suite: Mapped[str] = mapped_column(String(63))
    suite_digest: Mapped[str] = mapped_column(String(80), default="")
    name: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # Who wrote the number (migration 0004): 'trusted' or 'untrusted' (a ref main does not
    # trust, e.g. a pull request), the runner's code digest, the commit and the ref.
    namespace: Mapped[str] = mapped_column(
        String(16), default="trusted", server_default="trusted", index=True
    )
    code_digest: Mapped[str | None] = mapped_column(String(80))
    git_commit: Mapped[str | None] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(255))

    version: Mapped[VersionRow] = relationship(back_populates="metrics")


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, index=True)
    versions: Mapped[list[DatasetVersionRow]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        order_by="DatasetVersionRow.created_at",
    )


class DatasetVersionRow(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="uq_dataset_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[str] = mapped_column(String(80))  # content digest of the prepared splits
    resource_digest: Mapped[str] = mapped_column(String(80), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    rows: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dvc_md5: Mapped[str | None] = mapped_column(String(64))

    dataset: Mapped[DatasetRow] = relationship(back_populates="versions")


class ArenaAnswerRow(Base):
    """One model version's answer to one prompt under one generation setting (reused by key)."""

    __tablename__ = "arena_answers"

    key: Mapped[str] = mapped_column(String(80), primary_key=True)  # prompt+model+generation
    model: Mapped[str] = mapped_column(String(128))  # name@number, or a name for imported logs
    sha256: Mapped[str] = mapped_column(String(64))  # the answer text, in the blob store
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class ArenaBattleRow(Base):
    """Two answers to one prompt, shown to voters; unique per arena by its battle key."""

    __tablename__ = "arena_battles"
    __table_args__ = (UniqueConstraint("arena", "key", name="uq_arena_battle"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arena: Mapped[str] = mapped_column(String(63), index=True)
    key: Mapped[str] = mapped_column(String(80))
    question_id: Mapped[str | None] = mapped_column(String(128))
    prompt: Mapped[str | None] = mapped_column(Text)
    model_a: Mapped[str] = mapped_column(String(128))
    model_b: Mapped[str] = mapped_column(String(128))
    answer_a: Mapped[str | None] = mapped_column(ForeignKey("arena_answers.key"))
    answer_b: Mapped[str | None] = mapped_column(ForeignKey("arena_answers.key"))
    source: Mapped[str] = mapped_column(String(16), default="arena")  # arena | import
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    votes: Mapped[list[ArenaVoteRow]] = relationship(
        back_populates="battle", cascade="all, delete-orphan", order_by="ArenaVoteRow.id"
    )


class ArenaVoteRow(Base):
    """A judge's or a person's verdict on a battle; `winner` is None when it did not parse."""

    __tablename__ = "arena_votes"
    __table_args__ = (
        UniqueConstraint("battle_id", "voter_kind", "voter_id", name="uq_arena_vote"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    battle_id: Mapped[int] = mapped_column(
        ForeignKey("arena_battles.id", ondelete="CASCADE"), index=True
    )
    voter_kind: Mapped[str] = mapped_column(String(16))  # judge | human
    voter_id: Mapped[str] = mapped_column(String(128))
    winner: Mapped[str | None] = mapped_column(String(16))
    position: Mapped[str] = mapped_column(String(16), default="")
    tstamp: Mapped[float] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # raw verdicts

    battle: Mapped[ArenaBattleRow] = relationship(back_populates="votes")


class ScanRow(Base):
    """A brain scan of one model version (against a base), reused by its scan digest."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(80), unique=True, index=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # alarms, top layers
    files: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name -> blob sha256
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
