"""Dashboard data shaping per page (blind voting, per-sample changes, deployment counts,
model cards) and the app's token and voter cookie, without a browser or an apply."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.apply.blind_vote import blind_order, pending_battles, winner_of
from controller.ui.app import TOKEN_COOKIE, VOTER_COOKIE, is_loopback
from controller.ui.deployments import collected_counts, summarize_metrics
from controller.ui.evaluations import compare_samples, per_sample
from controller.ui.models import demote_headings
from controller.ui.server import create_app


def test_a_choice_on_the_blind_page_names_the_model_shown_there() -> None:
    for battle in range(20):
        swapped = blind_order(battle, "voter")
        first = winner_of("first", swapped)
        assert first == ("model_b" if swapped else "model_a")
        assert winner_of("second", swapped) != first
    assert winner_of("tie", True) == "tie" and winner_of("bothbad", False) == "tie (bothbad)"


def test_pending_battles_leave_out_voted_and_unanswered_ones() -> None:
    def battle(i: int, voters: list[str], answered: bool = True) -> SimpleNamespace:
        votes = [SimpleNamespace(voter_kind="human", voter_id=v) for v in voters]
        votes.append(SimpleNamespace(voter_kind="judge", voter_id="me"))
        return SimpleNamespace(id=i, answer_a="x" if answered else None, answer_b="", votes=votes)

    battles = [battle(1, ["me"]), battle(2, ["you"]), battle(3, [], answered=False), battle(4, [])]
    assert [b.id for b in pending_battles(battles, "me")] == [2, 4]


def test_sample_changes_follow_the_metric_direction() -> None:
    before = {
        "1": {"metrics": {"m": [0.2, 1.0]}},
        "2": {"metrics": {"m": [0.5, 1.0]}},
        "3": {"metrics": {"m": [1.0, 1.0]}},
    }
    after = {
        "1": {"metrics": {"m": [0.9, 1.0]}, "output": "yes"},
        "2": {"metrics": {"m": [0.1, 1.0]}},
        "3": {"metrics": {"m": [1.0, 1.0]}},
    }
    better, worse, same = compare_samples(before, after, "m", higher_is_better=True)
    assert [c.id for c in better] == ["1"] and [c.id for c in worse] == ["2"] and same == 1
    assert better[0].output_after == "yes"
    better, worse, _ = compare_samples(before, after, "m", higher_is_better=False)
    assert [c.id for c in better] == ["2"]
    assert per_sample(-100.0, 50.0) == -2.0 and per_sample(0.5, 0.0) == 0.5


def test_collected_counts_interactions_and_feedback(tmp_path: Path) -> None:
    rows = [
        {"type": "interaction", "id": "a"},
        {"type": "interaction", "id": "b"},
        {"type": "feedback", "id": "a", "rating": "up"},
        {"type": "feedback", "id": "b", "rating": "down", "correction": "better"},
    ]
    (tmp_path / "2025-01-01.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + "{oops\n"
    )
    assert collected_counts(tmp_path) == {
        "interactions": 2,
        "feedback up": 1,
        "feedback down": 1,
        "corrections": 1,
        "unreadable": 1,
    }
    assert collected_counts(tmp_path / "missing") == {}


def test_live_metrics_keep_llmops_series_by_status() -> None:
    registry = CollectorRegistry()
    requests = Counter("llmops_serve_requests", "r", ["route", "status"], registry=registry)
    requests.labels("/v1/chat/completions", "200").inc(3)
    requests.labels("/v1/models", "200").inc(2)
    requests.labels("/v1/chat/completions", "429").inc()
    Gauge("llmops_serve_in_flight", "g", registry=registry).set(1)
    Gauge("process_open_fds", "other", registry=registry).set(9)
    text = generate_latest(registry).decode()
    assert summarize_metrics(text_string_to_metric_families(text)) == {
        "in_flight": 1.0,
        "requests_total{status=200}": 5.0,
        "requests_total{status=429}": 1.0,
    }


def test_model_card_headings_sit_below_the_page_heading() -> None:
    assert (
        demote_headings("<h1>Card</h1><h2>Use</h2><h5>x</h5>")
        == "<h3>Card</h3><h4>Use</h4><h6>x</h6>"
    )


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "::", "example.org"))


def test_a_token_is_required_when_set_and_a_voter_cookie_is_given(tmp_path: Path) -> None:
    client = TestClient(create_app(tmp_path, token="s3cret"))
    refused = client.get("/models")
    assert refused.status_code == 401 and "token" in refused.text
    assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    entered = client.get("/models?token=s3cret", follow_redirects=False)
    assert entered.status_code == 303 and entered.headers["location"].endswith("/models")
    assert client.cookies.get(TOKEN_COOKIE) == "s3cret"
    page = client.get("/models")
    assert page.status_code == 200 and "No registry yet" in page.text
    voter = client.cookies.get(VOTER_COOKIE)
    assert voter and client.get("/arena").status_code == 200
    assert client.cookies.get(VOTER_COOKIE) == voter  # kept, not reissued


def test_pages_without_any_state_render(tmp_path: Path) -> None:
    client = TestClient(create_app(tmp_path))
    for path in ("/models", "/datasets", "/runs", "/evaluations", "/arena", "/scans", "/history"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert client.get("/models/nothing").status_code == 404
