"""The dashboard in a real browser (Debian's chromium driven by Playwright) over a repository
after a real apply: every page loads cleanly and offline, the runs page draws both runs'
curves, the evaluation page draws intervals, and a blind vote moves the leaderboard."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apply_repo import git
from tests.ui_repo import dashboard_server, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    # The network is off for the page: any host but the dashboard's fails to resolve.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# Pages and a detail page of each kind, as a person would click through them.
PAGES = {
    "overview": "/",
    "models": "/models",
    "model": "/models/assistant",
    "version": "/models/assistant/1",
    "datasets": "/datasets",
    "dataset": "/datasets/faq",
    "runs": "/runs",
    "experiment": "/runs/exp",
    "evaluations": "/evaluations",
    "samples": "/evaluations/samples/Evaluation/exp/faster",
    "arenas": "/arena",
    "arena": "/arena/duel",
    "vote": "/arena/duel/vote",
    "scans": "/scans",
    "scan": "/scans/1",
    "deployments": "/deployments",
    "history": "/history",
    "history-model": "/history?resource=Model/assistant",
}
EXTERNAL = re.compile(r"(?:https?:)?//(?!127\.0\.0\.1|localhost)[a-z0-9.-]+\.[a-z]{2,}", re.I)


def _browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            "chromium is not installed and could not be installed here (make test runs "
            "'apt-get install chromium' as root)"
        )
    return sync_playwright


@pytest.fixture
def applied(tmp_path: Path, tiny_model: Path, run_cli: Callable[..., Any]) -> Path:
    from tests.ui_repo import build_ui_repo

    root = build_ui_repo(tmp_path / "repo", tiny_model)
    done = run_cli("apply", "--skip-deploy", cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    git(root, "add", "llmops.lock")
    git(root, "commit", "-qm", "apply")
    return root


@pytest.fixture
def server(applied: Path) -> Iterator[str]:
    with dashboard_server(applied) as url:
        yield url


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("LLMOPS_TEST_ARTIFACTS") or tmp_path / "artifacts") / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots in {folder}")
    return folder


class Watch:
    """Console errors, failed requests and every text response a page made."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.bodies: dict[str, str] = {}
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url} {r.failure}"))
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")
        kind = response.headers.get("content-type", "")
        if any(t in kind for t in ("html", "css", "javascript")):
            with contextlib.suppress(Exception):  # a redirect's body is gone: no text
                self.bodies[response.url] = response.text()


def check_every_page_loads_offline_without_errors(page: Any, url: str, shots: Path) -> None:
    watch = Watch(page)
    for name, path in PAGES.items():
        page.goto(url + path, wait_until="networkidle")
        assert page.locator("h1").count() == 1, name
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert watch.errors == []
    served = "\n".join(watch.bodies.values())
    assert "/static/vendor/uplot/uPlot.iife.min.js" in " ".join(watch.bodies)
    for address, body in watch.bodies.items():
        assert not EXTERNAL.findall(body), (
            f"{address} names an external URL: {EXTERNAL.findall(body)[:3]}"
        )
    assert "<h1>" in served


def check_runs_page_draws_both_runs(page: Any, url: str) -> None:
    page.goto(url + "/runs/exp", wait_until="networkidle")
    counts = page.evaluate(
        """() => { const u = window.llmopsCharts.loss;
        return u.series.slice(1).map(
          (s, i) => [s.label, u.data[i + 1].filter(v => v !== null).length]); }"""
    )
    labels = [label for label, _ in counts]
    assert any(label.startswith("run default → assistant@") for label in labels), labels
    assert any(label.startswith("run faster → assistant@") for label in labels), labels
    assert all(points >= 4 for _, points in counts), counts  # 4 training steps per run
    check_curves_are_readable(page)
    drawn = page.evaluate(
        "() => { const c = document.querySelector('#chart-loss canvas');"
        " return c.toDataURL().length; }"
    )
    assert drawn > 3000  # a blank canvas of this size encodes to far less
    page.select_option("#x-axis", "time")
    page.check("#log-scale")
    page.fill("#smoothing", "0")
    xs = page.evaluate("() => window.llmopsCharts.loss.data[0]")
    assert xs and all(x >= 0 for x in xs)
    assert page.evaluate("() => window.llmopsCharts.loss.scales.y.distr") == 3
    assert page.locator("text=Config differences").count() == 1
    assert page.locator("code", has_text="training.learning_rate").count() == 1


def check_curves_are_readable(page: Any) -> None:
    """Ticks by magnitude, titles above the charts, no smoothing of short series, and the
    page's moving average equal to the debiased one in controller/ui/charts.py."""
    from controller.ui.charts import smooth
    from runners.train.curves import tick_labels

    # The learning rate (1e-3-ish) is drawn with tick labels that read back as their values.
    ticks = page.evaluate(
        """() => Object.entries(window.llmopsCharts).map(([metric, u]) => [metric,
        u.data.slice(1).flat().filter(v => v !== null && v !== undefined),
        u.axes[1]._splits, u.axes[1]._values])"""
    )
    small = [t for t in ticks if t[1] and 0 < max(abs(v) for v in t[1]) < 1e-2]
    assert "lr" in [t[0] for t in small], [(t[0], max(t[1] or [0])) for t in ticks]
    for metric, _values, splits, labels in ticks:
        assert len(splits) == len(labels) >= 2, (metric, splits, labels)
        for split, label in zip(splits, labels, strict=True):
            if split is not None and abs(split) > 1e-12:
                assert label != "0" and float(label) == pytest.approx(split, rel=1e-6), (
                    metric,
                    splits,
                    labels,
                )
    assert any(0 < split < 1e-2 for split in dict((t[0], t[2]) for t in small)["lr"]), small
    # A title above each chart.
    above = page.evaluate(
        """() => [...document.querySelectorAll('.charts figure')].map(f => [
        f.querySelector('figcaption.chart-title').innerText,
        f.querySelector('figcaption').getBoundingClientRect().bottom
          <= f.querySelector('.chart').getBoundingClientRect().top])"""
    )
    assert [title for title, _ in above] == [
        "Training loss",
        "Eval loss",
        "Learning rate",
        "Gradient norm",
    ]
    assert all(ok for _, ok in above), above
    # Smoothing is on (0.6) but every series here is short: none is smoothed, so a drawn
    # series is the raw points themselves (it passes through the first and last).
    assert page.input_value("#smoothing") == "0.6"
    smooth_min = page.evaluate("() => window.llmopsCurves.smoothMin")
    drawn = page.evaluate(
        """() => Object.entries(window.llmopsCharts).map(([metric, u]) => [metric,
        u.series.slice(1).map((s, i) => [s.label, u.data[i + 1].filter(v => v !== null)])])"""
    )
    eval_series = dict(drawn)["eval_loss"]
    assert eval_series and all(0 < len(points) < smooth_min for _, points in eval_series)
    for _metric, series in drawn:
        for label, points in series:
            assert "(smoothed)" not in label and "(raw)" not in label, (label, len(points))
    # One run alone: its learning rate peaks at 7.5e-4, ticks 1e-4 apart (uPlot's own
    # labels read "0" for each of them); every nonzero tick reads as its value.
    page.goto(page.url.split("?")[0] + "?run=default%40assistant%401", wait_until="networkidle")
    splits, labels = page.evaluate(
        "() => [window.llmopsCharts.lr.axes[1]._splits, window.llmopsCharts.lr.axes[1]._values]"
    )
    nonzero = [(s, t) for s, t in zip(splits, labels, strict=True) if s and abs(s) > 1e-12]
    assert nonzero and all(0 < s < 1e-3 for s, _ in nonzero), (splits, labels)
    assert all(t != "0" and float(t) == pytest.approx(s, rel=1e-6) for s, t in nonzero), labels
    assert len(set(labels)) == len(labels), labels
    for axis in ([0.0, 1e-4, 2e-4, 3e-4], [5.929, 5.93, 5.931], [0.0, 0.5, 1.0], [0.0, 1e5, 2e5]):
        assert page.evaluate("t => window.llmopsCurves.tickLabels(null, t)", axis) == (
            tick_labels(axis)
        )
    # The page's average is the debiased one, point for point.
    values = [3.0 - 0.05 * i + (0.2 if i % 3 == 0 else 0.0) for i in range(30)]
    in_page = page.evaluate("v => window.llmopsCurves.smooth(v, 0.6)", values)
    assert in_page == pytest.approx(smooth(values, 0.6))
    assert in_page[0] == pytest.approx(values[0])
    page.goto(page.url.split("?")[0], wait_until="networkidle")  # both runs again


def check_arena_without_decided_battles_ranks_nobody(page: Any, url: str) -> None:
    """The biased judge tied every battle: no rank 1, and the page says why."""
    page.goto(url + "/arena/duel", wait_until="networkidle")
    note = page.locator("#no-rank-note")
    assert note.count() == 1 and "No battle was decided" in note.inner_text()
    assert "0 decided" in page.locator("#outcomes").inner_text()
    ranks = page.locator("#leaderboard td.rank").all_inner_texts()
    assert ranks and set(ranks) == {"–"}, ranks
    judge = " ".join(page.locator("#judge-quality").inner_text().split())
    assert "Judge judge@1: position bias 100%" in judge, judge  # it said "A" in both orders
    assert "#1" not in page.locator("main").inner_text()
    page.goto(url + "/", wait_until="networkidle")
    row = page.locator("tr", has_text="Arena/duel").inner_text()
    assert "no battle decided" in row and "#1" not in row, row


def _alarm_counts(page: Any) -> tuple[int, int]:
    """(alarms on the scan page, distinct phenomena among them)."""
    items = page.locator("#alarms li")
    kinds = {items.nth(i).get_attribute("data-phenomenon") for i in range(items.count())}
    return items.count(), len(kinds)


def check_scan_pages_lead_with_changes_and_group_alarms(
    page: Any, url: str, root: Path, work: Path, shots: Path
) -> None:
    """The apply's scan (a LoRA against its base, on probes) leads with what changed; a scan
    of a model with two planted attention sinks over five layers shows two alarms, one per
    phenomenon, each naming its layers."""
    from controller.apply.inspect import stored_summary
    from controller.state.registry.arena import ScanStore
    from controller.workspace import open_registry
    from runners.inspect import ScanInputs, scan
    from tests.tiny import make_tiny_llama, plant_massive_activation

    page.goto(url + "/scans/1", wait_until="networkidle")
    assert page.locator("#changed-modules tbody tr").count() >= 1
    assert page.locator("#changed-neurons tbody tr").count() >= 1
    first = page.evaluate(
        "() => !!(document.querySelector('#changes').compareDocumentPosition("
        "document.querySelector('#alarms-h')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    assert first, "what changed must come before the alarms"
    count, kinds = _alarm_counts(page)
    assert count == kinds
    from transformers import AutoTokenizer

    random = make_tiny_llama(work / "sinks-random", seed=0, hidden=32, layers=6)
    probe = "What does the Team plan cost?"
    ids = AutoTokenizer.from_pretrained(random)(probe)["input_ids"]
    planted = plant_massive_activation(random, work / "sinks", [(ids[0], 3), (ids[2], 11)])
    result = scan(ScanInputs(planted, work / "sinks-scan", probes=[probe]))
    registry = open_registry(root)
    version = registry.find("assistant@1")
    assert version is not None
    files = {
        name: registry.blobs.put(work / "sinks-scan" / name).sha256
        for name in result["images"].values()
    }
    row = ScanStore(registry).add(
        "sha256:" + "5" * 64, version.id, None, stored_summary(result, None), files
    )
    page.goto(url + f"/scans/{row.id}", wait_until="networkidle")
    page.screenshot(path=str(shots / "scan-grouped-alarms.png"), full_page=True)
    count, kinds = _alarm_counts(page)
    assert count == kinds == 2, page.locator("#alarms").inner_text()
    assert page.locator("#alarms").get_attribute("data-count") == "2"
    assert page.locator("#alarms-h").inner_text() == "Alarms (2)"
    for text in page.locator("#alarms li").all_inner_texts():
        assert "massive activation" in text and "layers 0-4" in text, text


def check_evaluation_page_shows_intervals(page: Any, url: str) -> None:
    page.goto(url + "/evaluations", wait_until="networkidle")
    bars = page.locator("svg.interval rect.ci")
    assert bars.count() >= 6  # three metrics per run's evaluation, two runs
    label = page.locator("svg.interval").first.get_attribute("aria-label") or ""
    assert re.search(r"in \[.+, .+\]", label), label
    assert page.locator("ul.gates li.pass").count() >= 2


def _ratings(page: Any, url: str) -> dict[str, str]:
    page.goto(url + "/arena/duel", wait_until="networkidle")
    rows = page.locator("#leaderboard tbody tr")
    return {
        rows.nth(i).get_attribute("data-model"): rows.nth(i).locator("td.rating").inner_text()
        for i in range(rows.count())
    }


def check_a_blind_vote_moves_the_leaderboard_once(page: Any, url: str, root: Path) -> None:
    from controller.state.registry.arena import ArenaStore
    from controller.workspace import open_registry

    before = _ratings(page, url)
    assert set(before) == {"tiny@1", "mute@1"}
    assert len(set(before.values())) == 1  # the biased judge tied every battle
    # A voter is the holder of a key the operator made, not whoever the browser says it is.
    from controller.state.paths import StatePaths
    from controller.state.voters import VoterKeys

    key = VoterKeys(StatePaths.for_repo(root).root).add("tester")
    page.goto(url + "/arena/duel/vote", wait_until="networkidle")
    page.fill("#voter-key", key)
    page.click("#signin button")
    page.wait_for_load_state("networkidle")
    html = page.content()
    for name in ("tiny@1", "mute@1", "tiny", "mute"):
        assert name not in html, f"the ballot reveals '{name}' before the vote"
    battle = int(page.locator("#ballot").get_attribute("data-battle") or "0")
    answers = page.locator("pre.answer").all_inner_texts()
    # Vote for the model that answers at all (mute says nothing), as a person would.
    choice = "first" if answers[0] != "(empty answer)" else "second"
    page.click(f"button[value={choice}]")
    page.wait_for_load_state("networkidle")
    revealed = page.locator("#reveal .model-name").all_inner_texts()
    assert sorted(revealed) == ["mute@1", "tiny@1"]
    assert revealed[0 if choice == "first" else 1] == "tiny@1"
    after = _ratings(page, url)
    assert float(after["tiny@1"]) > float(after["mute@1"]), after
    # The same voter (same key) posting the same battle again is refused, not counted.
    page.goto(url + "/arena/duel/vote", wait_until="networkidle")
    token = page.locator("input[name=token]").first.get_attribute("value")
    again = page.request.post(
        url + "/arena/duel/vote",
        form={"battle": str(battle), "choice": "second", "token": token or ""},
    )
    assert again.ok and "voted on this battle already" in again.text()
    votes = [
        v
        for b in ArenaStore(open_registry(root)).battles("duel")
        for v in b.votes
        if v.voter_kind == "human"
    ]
    assert len(votes) == 1 and votes[0].winner in ("model_a", "model_b")
    assert _ratings(page, url) == after


def test_dashboard_in_a_browser(applied: Path, server: str, tmp_path: Path) -> None:
    """One story over one apply (each step reads what the one before left)."""
    sync_playwright = _browser_or_skip()
    shots = _artifacts(tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            check_every_page_loads_offline_without_errors(page, server, shots)
            check_runs_page_draws_both_runs(page, server)
            check_evaluation_page_shows_intervals(page, server)
            check_scan_pages_lead_with_changes_and_group_alarms(
                page, server, applied, tmp_path, shots
            )
            check_arena_without_decided_battles_ranks_nobody(page, server)
            check_a_blind_vote_moves_the_leaderboard_once(page, server, applied)
        finally:
            browser.close()
    if os.environ.get("LLMOPS_UI_README_SHOTS"):
        for name in ("experiment", "arena"):
            shutil.copy(
                shots / f"{name}.png", Path(os.environ["LLMOPS_UI_README_SHOTS"]) / f"ui-{name}.png"
            )


def test_listening_off_loopback_needs_a_token(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    done = run_cli("ui", "--host", "0.0.0.0", "--port", str(free_port()), cwd=tmp_path)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr
    assert "--token-env" in done.stderr
    unset = run_cli(
        "ui", "--host", "0.0.0.0", "--token-env", "LLMOPS_UI_TEST_NO_SUCH_VAR", cwd=tmp_path
    )
    assert unset.returncode == 2 and "not set" in unset.stderr
