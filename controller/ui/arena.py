"""Dashboard, arena pages: leaderboards with interval whiskers, the win-rate matrix, and blind
voting (two answers in an order random per voter, names shown only after the vote; the vote
lands in the arena's storage, once per voter and battle). A voter is the holder of a voter key
the operator made (`llmops arena voters add NAME`), never a cookie the browser made up; an
arena whose spec says `human_votes: false` takes no human votes and counts none."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from controller.api.arena import ArenaSpec, Bootstrap
from controller.apply.arena import judge_quality, votes_of
from controller.apply.blind_vote import (
    CHOICES,
    Ballot,
    ballot,
    cast,
    pending_battles,
    revealed_models,
)
from controller.observe.leaderboard import (
    Outcomes,
    judge_lines,
    no_decision_note,
    outcomes_of,
    separation_note,
    shown_ranks,
)
from controller.state.registry.arena import AlreadyVoted, ArenaStore
from controller.state.voters import VoterKeys
from controller.ui.app import form_token, render, ui_state
from controller.ui.charts import IntervalBar, heat_colour, whiskers
from controller.ui.state import UiState
from runners.arena.ratings import leaderboard

router = APIRouter()
# The browser keeps the voter key it signed in with; the server maps it to a name each time,
# so a removed key stops voting at once.
KEY_COOKIE = "llmops_voter_key"
SIGN_IN = "sign in with your voter key (the operator makes one: 'llmops arena voters add NAME')"
VOTERS = ("all", "human", "judge")


def arena_names(state: UiState) -> list[str]:

    names = {a.split("/", 1)[1] for a in state.entries("Arena")}
    registry = state.registry()
    if registry is not None:
        names.update(ArenaStore(registry).arenas())
    return sorted(names)


def human_votes_of(state: UiState, name: str) -> bool | None:
    """The applied Arena spec's `human_votes` (lock file); None when the arena has no spec
    (battles from an imported log)."""
    entry = state.lock().get(f"Arena/{name}")
    spec = entry.applied_spec(ArenaSpec) if entry else None
    return None if spec is None else spec.human_votes


def signed_in(request: Request) -> str | None:
    """The voter whose key this browser signed in with; None without a (valid) key."""
    return VoterKeys(ui_state(request).paths.root).identify(request.cookies.get(KEY_COOKIE))


def bootstrap_of(state: UiState, name: str) -> dict[str, Any]:
    """The arena spec's bootstrap settings as the lock file recorded them, else defaults."""
    entry = state.lock().get(f"Arena/{name}")
    spec = entry.applied_spec(ArenaSpec) if entry else None
    return (spec.bootstrap if spec else Bootstrap()).model_dump()


@dataclass
class ArenaView:
    name: str
    voters: str
    board: Any  # runners.arena.ratings.Leaderboard
    bars: list[IntervalBar]
    models: list[str]
    matrix: list[list[tuple[float | None, int, str]]]  # per row model: (rate, battles, colour)
    battles: int
    pending: int
    outcomes: Outcomes | None = None  # counted votes by outcome, unparseable verdicts
    ranks: list[str] = field(default_factory=list)  # per standing; '' where none is supported
    note: str | None = None  # why no model is ranked, when none is
    judge: list[str] = field(default_factory=list)  # position bias, agreement with people
    endpoints: list[EndpointRow] = field(default_factory=list)  # endpoint contestants


@dataclass(frozen=True)
class EndpointRow:
    """An endpoint contestant as the last apply recorded it: identity, latency, tokens."""

    label: str
    model: str
    endpoint: str
    answers: int
    latency_s: float | None
    latency_p95_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    requests: int
    retries: int


def endpoint_rows(state: UiState, name: str) -> list[EndpointRow]:
    """Each endpoint contestant's latency and token usage from the lock file's Arena entry
    (controller.state.lockfile EndpointUsage); none for an arena without endpoints."""
    entry = state.lock().get(f"Arena/{name}")
    endpoints = getattr(entry.outputs, "endpoints", None) if entry else None
    return [
        EndpointRow(
            label,
            u.model,
            u.endpoint,
            u.answers,
            u.latency_s,
            u.latency_p95_s,
            u.prompt_tokens,
            u.completion_tokens,
            u.requests,
            u.retries,
        )
        for label, u in sorted((endpoints or {}).items())
    ]


def judge_quality_of(state: UiState, name: str, battles: list[Any]) -> Any:
    """The applied arena's judge quality (controller.state.lockfile.JudgeQuality) from the
    stored votes, the judge named as the lock file recorded it; None without a judge."""
    entry = state.lock().get(f"Arena/{name}")
    spec = entry.applied_spec(ArenaSpec) if entry else None
    if spec is None or spec.judge is None:
        return None
    recorded = getattr(entry.outputs, "judge", None) if entry else None
    return judge_quality(spec, battles, recorded.judge if recorded else None)


def arena_view(state: UiState, name: str, voters: str, voter: str | None) -> ArenaView | None:
    registry = state.registry()
    if registry is None:
        return None
    battles = ArenaStore(registry).battles(name)
    if not battles:
        return None
    size = sum(len(b.votes) for b in battles)
    quality_key = ("judge", name, len(battles), size)
    if quality_key not in state.cache:
        state.cache[quality_key] = judge_quality_of(state, name, battles)
    quality = state.cache[quality_key]
    # imported arenas (no spec) keep the human votes their log brought; a judge short of
    # judge.require_agreement counts only on its own board
    votes = votes_of(
        battles,
        voters,
        human=human_votes_of(state, name) is not False,
        judge=quality is None or quality.counted or voters == "judge",
    )
    key = ("board", name, voters, len(votes), size)
    if key not in state.cache:
        state.cache[key] = leaderboard(votes, **bootstrap_of(state, name)) if votes else None
    board = state.cache[key]
    models = [s.model for s in board.standings] if board else []
    bars = (
        whiskers([(s.model, s.rating, s.lower, s.upper) for s in board.standings]) if board else []
    )
    matrix = [
        [
            (
                board.win_rates.get(a, {}).get(b),
                board.battle_counts.get(a, {}).get(b, 0),
                heat_colour(board.win_rates.get(a, {}).get(b)),
            )
            for b in models
        ]
        for a in models
    ]
    unparseable = (
        sum(1 for b in battles for v in b.votes if v.winner is None) if voters != "human" else 0
    )
    outcomes = outcomes_of(board.standings if board else [], unparseable)
    ranks = [s.rank for s in board.standings] if board else []
    return ArenaView(
        name,
        voters,
        board,
        bars,
        models,
        matrix,
        len(battles),
        len(pending_battles(battles, voter)) if voter else 0,
        outcomes,
        shown_ranks(ranks, outcomes.decided),
        no_decision_note(outcomes) or separation_note(ranks, outcomes.decided),
        judge_lines(quality),
        endpoint_rows(state, name),
    )


@dataclass
class Reveal:
    battle_id: int
    first: str
    second: str
    choice: str


def ballot_for(state: UiState, name: str, voter: str) -> tuple[Ballot | None, int]:
    """The next battle this voter has not voted on, answers in the voter's blind order (no
    model names), and how many are left."""
    registry = state.registry()
    if registry is None:
        return None, 0
    pending = pending_battles(ArenaStore(registry).battles(name), voter)
    return (ballot(pending[0], voter), len(pending)) if pending else (None, 0)


def reveal_for(state: UiState, battle_id: int, voter: str) -> Reveal | None:
    """The names behind a battle's answers, only once this voter has voted on it."""
    registry = state.registry()
    battle = ArenaStore(registry).battle(battle_id) if registry else None
    shown = revealed_models(battle, voter) if battle is not None else None
    return Reveal(battle_id, *shown) if shown else None


@router.get("/arena", response_class=HTMLResponse)
def arenas_page(request: Request) -> HTMLResponse:
    return render(request, "arenas.html", title="Arena", arenas=arena_names(ui_state(request)))


@router.get("/arena/{name}", response_class=HTMLResponse)
def arena_page(request: Request, name: str, voters: str = "all") -> HTMLResponse:
    if voters not in VOTERS:
        raise HTTPException(400, f"voters must be one of {', '.join(VOTERS)}")
    view = arena_view(ui_state(request), name, voters, signed_in(request))
    if view is None:
        raise HTTPException(404, f"arena '{name}' has no battles")
    return render(request, "arena.html", title=f"Arena {name}", view=view, voter_kinds=VOTERS)


@router.get("/arena/{name}/vote", response_class=HTMLResponse)
def vote_page(
    request: Request, name: str, revealed: int | None = None, error: str | None = None
) -> HTMLResponse:
    state, voter = ui_state(request), signed_in(request)
    open_to_people = human_votes_of(state, name) is True
    ballot, left = ballot_for(state, name, voter) if voter and open_to_people else (None, 0)
    reveal = reveal_for(state, revealed, voter) if voter and revealed is not None else None
    return render(
        request,
        "vote.html",
        title=f"Vote in arena {name}",
        name=name,
        voter=voter,
        open_to_people=open_to_people,
        ballot=ballot,
        left=left,
        reveal=reveal,
        choices=CHOICES,
        token=form_token(request),
        error=error,
    )


def _check_form(request: Request, token: str) -> None:
    if not hmac.compare_digest(token, form_token(request)):
        raise HTTPException(403, "the form is stale or from another site; reload the page")


@router.post("/arena/{name}/voter")
def sign_in(request: Request, name: str, key: str = Form(...), token: str = Form(...)) -> Response:
    """Sign this browser in with a voter key; the key, not the browser, is the voter."""
    _check_form(request, token)
    if VoterKeys(ui_state(request).paths.root).identify(key.strip()) is None:
        raise HTTPException(403, f"unknown or removed voter key; {SIGN_IN}")
    response = RedirectResponse(f"/arena/{name}/vote", 303)
    response.set_cookie(
        KEY_COOKIE, key.strip(), max_age=365 * 24 * 3600, httponly=True, samesite="strict"
    )
    return response


@router.post("/arena/{name}/vote")
def cast_vote(
    request: Request,
    name: str,
    battle: int = Form(...),
    choice: str = Form(...),
    token: str = Form(...),
) -> Response:

    _check_form(request, token)
    if choice not in CHOICES:
        raise HTTPException(400, f"choice must be one of {', '.join(CHOICES)}")
    state = ui_state(request)
    if human_votes_of(state, name) is not True:
        raise HTTPException(
            403, f"arena '{name}' does not take human votes (its spec has no 'human_votes: true')"
        )
    voter = signed_in(request)
    if voter is None:
        raise HTTPException(403, f"votes need a voter: {SIGN_IN}")
    registry = state.registry()
    store = ArenaStore(registry) if registry else None
    found = store.battle(battle) if store else None
    if store is None or found is None or found.arena != name:
        raise HTTPException(404, f"no battle {battle} in arena '{name}'")
    try:
        # one row per (battle, voter name): the registry's unique constraint refuses a second
        cast(store, battle, voter, choice, via="ui")
    except AlreadyVoted:
        return RedirectResponse(f"/arena/{name}/vote?revealed={battle}&error=already", 303)
    return RedirectResponse(f"/arena/{name}/vote?revealed={battle}", 303)
