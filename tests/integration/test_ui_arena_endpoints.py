"""The dashboard's arena page in a real browser (Debian's chromium driven by Playwright): an
arena with an endpoint contestant shows that endpoint's identity, latency and token usage as
the last apply recorded them in the lock file, and never anything of its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.state.lockfile import (
    ArenaOutputs,
    EndpointUsage,
    LockEntry,
    LockFile,
    write_lock,
)
from controller.state.registry.arena import ArenaStore
from controller.workspace import open_registry
from tests.integration.test_ui import ARGS, CHROMIUM, _browser_or_skip
from tests.ui_repo import dashboard_server

URL = "http://127.0.0.1:9/v1"


def repository(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two battles of `tiny@1` against the endpoint contestant `hosted`, judged, and the lock
    file entry an apply of the arena wrote."""
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    (root / "specs").mkdir(parents=True)
    store = ArenaStore(open_registry(root))
    for number, winner in ((1, "model_b"), (2, "model_a")):
        battle = store.add_battle(
            "duel", f"b{number}", model_a="tiny@1", model_b="hosted", prompt=f"question {number}"
        )
        store.add_vote(battle, voter_kind="judge", voter_id="rouge_l", winner=winner)
    usage = EndpointUsage(
        endpoint=URL,
        model="knower",
        settings={"max_new_tokens": 16, "concurrency": 3},
        answers=2,
        latency_s=0.0412,
        latency_p95_s=0.0538,
        prompt_tokens=57,
        completion_tokens=19,
        requests=3,
        retries=1,
    )
    entry = LockEntry(
        kind="Arena",
        digest="sha256:" + "0" * 64,
        outputs=ArenaOutputs(battles=2, endpoints={"hosted": usage}),
    )
    write_lock(root / "llmops.lock", LockFile(resources={"Arena/duel": entry}))
    return root


def test_the_arena_page_shows_each_endpoints_latency_and_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync_playwright = _browser_or_skip()
    root = repository(tmp_path / "repo", monkeypatch)
    with dashboard_server(root) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url + "/arena/duel", wait_until="networkidle")
            row = page.locator('#endpoints tr[data-endpoint="hosted"]')
            assert row.count() == 1
            cells = [c.strip() for c in row.locator("td").all_inner_texts()]
            assert cells == [
                "hosted", "knower", URL, "2", "0.0412 s", "0.0538 s", "57", "19", "3", "1",
            ]  # fmt: skip
            assert (
                page.locator("#endpoints caption")
                .inner_text()
                .startswith("Endpoint contestants: latency and token usage")
            )
            # the registry contestant has no row: it is no endpoint
            assert page.locator('#endpoints tr[data-endpoint="tiny@1"]').count() == 0
        finally:
            browser.close()
