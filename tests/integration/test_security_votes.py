"""Issue 27, class 9 (vote stuffing), against the real dashboard (`llmops ui` under uvicorn,
driven over HTTP) on a real SQLite registry: a voter is not a cookie the browser makes up, and
an arena whose spec says `human_votes: false` takes no human votes and counts none."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.api.arena import ArenaJudge, ArenaSpec, FilePrompts
from tests.ui_repo import dashboard_server, server_environment

BATTLES = 3


def _seed(root: Path) -> None:
    """Two arenas with answered battles and a judge's votes; their Arena specs as apply
    recorded them in llmops.lock: 'open' takes human votes, 'closed' does not."""
    from controller.state.lockfile import LOCK_FILE, LockEntry, LockFile, write_lock
    from controller.state.paths import StatePaths
    from controller.state.registry.arena import ArenaStore
    from controller.state.registry.store import Registry

    store = ArenaStore(Registry.open(StatePaths.for_repo(root)))
    for arena in ("open", "closed"):
        for n in range(BATTLES):
            store.put_answer(f"{arena}-{n}-a", "good@1", f"A good answer {n}.")
            store.put_answer(f"{arena}-{n}-b", "bad@1", f"A bad answer {n}.")
            battle = store.add_battle(
                arena,
                f"{arena}-{n}",
                model_a="good@1",
                model_b="bad@1",
                prompt=f"Question {n}?",
                answer_a=f"{arena}-{n}-a",
                answer_b=f"{arena}-{n}-b",
            )
            store.add_vote(battle, voter_kind="judge", voter_id="judge", winner="tie")
    lock = LockFile()
    for arena, human in (("open", True), ("closed", False)):
        lock.resources[f"Arena/{arena}"] = LockEntry.model_validate(
            {
                "kind": "Arena",
                "digest": f"sha256:{arena}",
                # As apply records it: the whole spec, defaults included.
                "spec": ArenaSpec(
                    models=["good", "bad"],
                    prompts=FilePrompts(type="file", path="data/prompts.jsonl"),
                    judge=ArenaJudge(model="good", rubric="Which answer is better?"),
                    human_votes=human,
                ).model_dump(mode="json"),
                "outputs": {},
            }
        )
    write_lock(root / LOCK_FILE, lock)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("votes") / "repo"
    root.mkdir()
    _seed(root)
    with dashboard_server(root, server_environment(LLMOPS_ROOT=str(root)), "/arena") as url:
        yield url, root


def _human_votes(root: Path, arena: str) -> list[Any]:
    from controller.state.paths import StatePaths
    from controller.state.registry.arena import ArenaStore
    from controller.state.registry.store import Registry

    store = ArenaStore(Registry.open(StatePaths.for_repo(root)))
    return [v for b in store.battles(arena) for v in b.votes if v.voter_kind == "human"]


def _first_battle(root: Path, arena: str) -> int:
    from controller.state.paths import StatePaths
    from controller.state.registry.arena import ArenaStore
    from controller.state.registry.store import Registry

    return ArenaStore(Registry.open(StatePaths.for_repo(root))).battles(arena)[0].id


def _form_token(page: str) -> str:
    found = re.search(r'name="token" value="([^"]+)"', page)
    return found.group(1) if found else ""


def _vote(client: httpx.Client, arena: str, battle: int) -> httpx.Response:
    """What a person's browser (or a script) does: load the vote page, post the form (the
    form token is per browser, so one from any vote page will do)."""
    page = client.get(f"/arena/{arena}/vote")
    if not _form_token(page.text):
        page = client.get("/arena/open/vote")
    return client.post(
        f"/arena/{arena}/vote",
        data={"battle": str(battle), "choice": "first", "token": _form_token(page.text)},
    )


def _sign_in(client: httpx.Client, arena: str, key: str) -> httpx.Response:
    page = client.get(f"/arena/{arena}/vote")
    return client.post(f"/arena/{arena}/voter", data={"key": key, "token": _form_token(page.text)})


def test_clearing_cookies_does_not_make_a_new_voter(dashboard: tuple[str, Path]) -> None:
    """The attack: vote, clear cookies (a fresh client), vote on the same battle again."""
    url, root = dashboard
    battle = _first_battle(root, "open")
    before = len(_human_votes(root, "open"))
    answers = []
    for _ in range(2):
        with httpx.Client(base_url=url) as fresh:  # no cookies: as after clearing them
            answers.append(_vote(fresh, "open", battle).status_code)
    counted = len(_human_votes(root, "open")) - before
    assert counted == 0, f"{counted} votes counted from one person clearing cookies"
    assert answers == [403, 403]


def test_a_voter_key_votes_once_per_battle_whatever_the_cookies(
    dashboard: tuple[str, Path], run_cli: Callable[..., Any]
) -> None:
    url, root = dashboard
    added = run_cli("arena", "voters", "add", "alice", "--root", str(root), cwd=root)
    assert added.returncode == 0, added.stdout + added.stderr
    key = added.stdout.strip().splitlines()[-1].strip()
    again = run_cli("arena", "voters", "add", "alice", "--root", str(root), cwd=root)
    assert again.returncode != 0 and "already" in again.stderr
    battle = _first_battle(root, "open")
    with httpx.Client(base_url=url) as client:
        assert _sign_in(client, "open", "not-a-key").status_code == 403
        assert _sign_in(client, "open", key).status_code == 303
        assert _vote(client, "open", battle).status_code == 303
    with httpx.Client(base_url=url) as fresh:  # cookies cleared: sign in again, vote again
        assert _sign_in(fresh, "open", key).status_code == 303
        refused = _vote(fresh, "open", battle)
        assert refused.status_code == 303 and "error=already" in refused.headers["location"]
    mine = [v for v in _human_votes(root, "open") if v.voter_id == "alice"]
    assert len(mine) == 1 and mine[0].detail.get("voter") == "key"
    listed = run_cli("arena", "voters", "list", "--root", str(root), cwd=root)
    assert "alice" in listed.stdout and key not in listed.stdout
    assert run_cli("arena", "voters", "rm", "alice", "--root", str(root), cwd=root).returncode == 0
    with httpx.Client(base_url=url) as client:
        assert _sign_in(client, "open", key).status_code == 403  # removed: the key is void


def test_an_arena_without_human_votes_refuses_and_ignores_them(
    dashboard: tuple[str, Path], run_cli: Callable[..., Any]
) -> None:
    url, root = dashboard
    added = run_cli("arena", "voters", "add", "bob", "--root", str(root), cwd=root)
    key = added.stdout.strip().splitlines()[-1].strip() if added.returncode == 0 else ""
    battle = _first_battle(root, "closed")
    with httpx.Client(base_url=url) as client:
        _sign_in(client, "closed", key)
        cast = _vote(client, "closed", battle)
    assert cast.status_code == 403, f"a human vote was taken ({cast.status_code})"
    assert _human_votes(root, "closed") == []
    # A human vote stored by other means (an import, an older version) is not counted either.
    from controller.state.paths import StatePaths
    from controller.state.registry.arena import ArenaStore
    from controller.state.registry.store import Registry

    store = ArenaStore(Registry.open(StatePaths.for_repo(root)))
    store.add_vote(battle, voter_kind="human", voter_id="carol", winner="model_a")
    human_board = httpx.get(url + "/arena/closed?voters=human").text
    assert "data-model=" not in human_board, "human votes counted in a judge-only arena"
    assert 'data-model="good@1"' in httpx.get(url + "/arena/closed").text
