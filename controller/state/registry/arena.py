"""Registry, arena and scan storage: battles, votes and answers; brain scans by digest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from controller.state.registry.schema import ArenaAnswerRow, ArenaBattleRow, ArenaVoteRow, ScanRow
from controller.state.registry.store import Registry, RegistryError
from runners.arena.fastchat import ImportedBattle
from runners.arena.outcomes import Vote


class AlreadyVoted(RegistryError):
    """This voter has voted on this battle already; a second vote is refused, not merged."""


@dataclass
class VoteRecord:
    voter_kind: str
    voter_id: str
    winner: str | None  # None: the verdict did not parse; kept, never counted
    position: str
    tstamp: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BattleRecord:
    id: int
    arena: str
    key: str
    question_id: str | None
    prompt: str | None
    model_a: str
    model_b: str
    answer_a: str | None
    answer_b: str | None
    source: str
    extra: dict[str, Any]
    votes: list[VoteRecord]

    def vote_objects(self, voter_kind: str | None = None) -> list[Vote]:
        """The counted votes (parsed verdicts) as the rating code takes them."""
        return [
            Vote(
                self.model_a,
                self.model_b,
                v.winner,  # type: ignore[arg-type]
                voter_kind=v.voter_kind,  # type: ignore[arg-type]
                voter_id=v.voter_id,
                tstamp=v.tstamp,
                position=v.position,
                question_id=self.question_id,
            )
            for v in self.votes
            if v.winner is not None
            and counted(v)
            and (voter_kind in (None, "all") or v.voter_kind == voter_kind)
        ]


def counted(vote: VoteRecord) -> bool:
    """Whether a stored vote counts. Dashboard votes from before voter keys carry only a
    browser-made cookie as their voter (clearing it voted again), so they are kept, shown,
    never counted; dashboard votes now name a voter key's holder (detail voter=key)."""
    detail = vote.detail or {}
    return not (detail.get("via") == "ui" and detail.get("voter") != "key")


class ArenaStore:
    """Battles and votes in the registry database; answer texts in the blob store."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # ----- answers -------------------------------------------------------------------------
    def answer(self, key: str) -> str | None:
        with self.registry.sessions() as session:
            row = session.get(ArenaAnswerRow, key)
            if row is None or not self.registry.blobs.exists(row.sha256):
                return None
            return self.registry.blobs.read_text(row.sha256)

    def put_answer(self, key: str, model: str, text: str) -> None:
        blob = self.registry.blobs.put_bytes(text.encode("utf-8"), "answer")
        with self.registry.session() as session:
            row = session.get(ArenaAnswerRow, key)
            if row is None:
                session.add(ArenaAnswerRow(key=key, model=model, sha256=blob.sha256))
            else:
                row.sha256 = blob.sha256

    # ----- battles -------------------------------------------------------------------------
    def add_battle(
        self,
        arena: str,
        key: str,
        *,
        model_a: str,
        model_b: str,
        prompt: str | None,
        question_id: str | None = None,
        answer_a: str | None = None,
        answer_b: str | None = None,
        source: str = "arena",
        extra: dict[str, Any] | None = None,
    ) -> int:
        """The battle's id; an existing battle with this key is returned, not duplicated."""
        with self.registry.session() as session:
            found = session.scalar(
                select(ArenaBattleRow.id).where(
                    ArenaBattleRow.arena == arena, ArenaBattleRow.key == key
                )
            )
            if found is not None:
                return found
            row = ArenaBattleRow(
                arena=arena,
                key=key,
                question_id=question_id,
                prompt=prompt,
                model_a=model_a,
                model_b=model_b,
                answer_a=answer_a,
                answer_b=answer_b,
                source=source,
                extra=extra or {},
            )
            session.add(row)
            session.flush()
            return row.id

    def add_vote(
        self,
        battle_id: int,
        *,
        voter_kind: str,
        voter_id: str,
        winner: str | None,
        position: str = "",
        tstamp: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        try:
            with self.registry.session() as session:
                if session.get(ArenaBattleRow, battle_id) is None:
                    raise RegistryError(f"no arena battle {battle_id}")
                session.add(
                    ArenaVoteRow(
                        battle_id=battle_id,
                        voter_kind=voter_kind,
                        voter_id=voter_id,
                        winner=winner,
                        position=position,
                        tstamp=time.time() if tstamp is None else tstamp,
                        detail=detail or {},
                    )
                )
        except IntegrityError as err:
            raise AlreadyVoted(
                f"{voter_kind} '{voter_id}' has voted on battle {battle_id} already; "
                "each voter votes once per battle"
            ) from err

    def battles(self, arena: str) -> list[BattleRecord]:
        with self.registry.sessions() as session:
            rows = session.scalars(
                select(ArenaBattleRow)
                .options(selectinload(ArenaBattleRow.votes))
                .where(ArenaBattleRow.arena == arena)
                .order_by(ArenaBattleRow.id)
            ).all()
            answers = {
                r.key: r.sha256
                for r in session.scalars(
                    select(ArenaAnswerRow).where(
                        ArenaAnswerRow.key.in_(
                            {k for b in rows for k in (b.answer_a, b.answer_b) if k}
                        )
                    )
                ).all()
            }
            return [self._record(row, answers) for row in rows]

    def battle(self, battle_id: int) -> BattleRecord | None:
        return next((b for b in self.by_ids([battle_id])), None)

    def by_ids(self, ids: list[int]) -> list[BattleRecord]:
        with self.registry.sessions() as session:
            rows = session.scalars(
                select(ArenaBattleRow)
                .options(selectinload(ArenaBattleRow.votes))
                .where(ArenaBattleRow.id.in_(ids))
            ).all()
            keys = {k for b in rows for k in (b.answer_a, b.answer_b) if k}
            answers = {
                r.key: r.sha256
                for r in session.scalars(
                    select(ArenaAnswerRow).where(ArenaAnswerRow.key.in_(keys))
                ).all()
            }
            return [self._record(row, answers) for row in rows]

    def _record(self, row: ArenaBattleRow, answers: dict[str, str]) -> BattleRecord:
        def text(key: str | None) -> str | None:
            sha = answers.get(key or "")
            if sha is None or not self.registry.blobs.exists(sha):
                return None
            return self.registry.blobs.read_text(sha)

        return BattleRecord(
            id=row.id,
            arena=row.arena,
            key=row.key,
            question_id=row.question_id,
            prompt=row.prompt,
            model_a=row.model_a,
            model_b=row.model_b,
            answer_a=text(row.answer_a),
            answer_b=text(row.answer_b),
            source=row.source,
            extra=dict(row.extra or {}),
            votes=[
                VoteRecord(v.voter_kind, v.voter_id, v.winner, v.position, v.tstamp, v.detail)
                for v in row.votes
            ],
        )

    def arenas(self) -> list[str]:
        with self.registry.sessions() as session:
            return sorted(set(session.scalars(select(ArenaBattleRow.arena).distinct()).all()))


class ScanStore:
    """Brain scans per model version, reused by the scan's digest."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def find(self, digest: str) -> ScanRow | None:
        with self.registry.sessions() as session:
            row = session.scalar(select(ScanRow).where(ScanRow.digest == digest))
            if row is None:
                return None
            if not all(self.registry.blobs.exists(sha) for sha in row.files.values()):
                return None  # a blob went missing: scan again rather than show half a scan
            return row

    def for_version(self, version_id: int) -> list[ScanRow]:
        with self.registry.sessions() as session:
            return list(
                session.scalars(
                    select(ScanRow)
                    .where(ScanRow.version_id == version_id)
                    .order_by(ScanRow.id.desc())
                ).all()
            )

    def add(
        self,
        digest: str,
        version_id: int,
        base_version_id: int | None,
        summary: dict[str, Any],
        files: dict[str, str],
    ) -> ScanRow:
        with self.registry.session() as session:
            row = session.scalar(select(ScanRow).where(ScanRow.digest == digest))
            if row is None:
                row = ScanRow(digest=digest, version_id=version_id)
                session.add(row)
            row.base_version_id = base_version_id
            row.summary = summary
            row.files = files
            session.flush()
            return row


def export_battles(battles: list[BattleRecord]) -> list[Any]:
    """One FastChat row per counted vote, answers and unknown fields carried along."""
    return [
        ImportedBattle(
            vote=vote,
            prompt=battle.prompt,
            answer_a=battle.answer_a,
            answer_b=battle.answer_b,
            extra=dict(battle.extra),
        )
        for battle in battles
        for vote in battle.vote_objects()
    ]
