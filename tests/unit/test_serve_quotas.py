"""Per-client quota accounting (runners/serve/quotas.py) and usage rows (usage.py), with the
clocks injected: no server, no sleeping."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runners.serve.config import ConfigError, Quotas, ServeConfig, parse_config
from runners.serve.middleware import identify
from runners.serve.quotas import DailyTokens, QuotaBook, RequestWindow, until_midnight
from runners.serve.usage import RequestUsage, UsageLog, read_rows, row, tokens_today, totals

NOON = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.utc = NOON

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.utc += timedelta(seconds=seconds)


def book(quotas: dict[str, Quotas], clock: Clock, spent: dict[str, int] | None = None) -> QuotaBook:
    return QuotaBook(quotas, spent, monotonic=lambda: clock.mono, utcnow=lambda: clock.utc)


def test_the_window_admits_the_limit_in_any_60_seconds_and_says_when_the_next_fits() -> None:
    window = RequestWindow(3)
    assert [window.take(t) for t in (0.0, 10.0, 20.0)] == [0, 0, 0]
    assert window.take(30.0) == pytest.approx(30.0)  # the one at 0 leaves at 60
    assert window.take(59.9) == pytest.approx(0.1)
    assert window.take(60.0) == 0  # slides: the one at 0 is out
    assert window.take(61.0) == pytest.approx(9.0)  # 10, 20, 60 are in
    assert len(window.times) == 3  # refused requests are not logged: memory bounded


def test_daily_tokens_refuse_once_reached_until_midnight_utc_then_start_over() -> None:
    daily = DailyTokens(100, NOON.date())
    assert daily.wait(NOON) == 0
    daily.spend(99, NOON)
    assert daily.wait(NOON) == 0  # under the limit: the next request may still run
    daily.spend(30, NOON)  # the crossing request finished past the limit
    assert daily.wait(NOON) == pytest.approx(12 * 3600)
    assert until_midnight(NOON + timedelta(hours=11, minutes=59, seconds=59)) == 1
    next_day = NOON + timedelta(hours=12)
    assert daily.wait(next_day) == 0 and daily.spent == 0


def test_one_client_past_its_quota_leaves_the_others_alone() -> None:
    clock = Clock()
    quotas = {"web": Quotas(requests_per_minute=2), "batch": Quotas(tokens_per_day=50)}
    quota = book(quotas, clock)
    assert quota.admit("web") is None and quota.admit("web") is None
    refusal = quota.admit("web")
    assert refusal is not None and refusal.quota == "requests_per_minute"
    assert (refusal.limit, refusal.wait_s) == (2, pytest.approx(60.0))
    # batch, and a client without quotas, are unaffected
    assert all(quota.admit("batch") is None for _ in range(20))
    assert all(quota.admit("default") is None for _ in range(20))
    quota.spend("batch", 49)
    assert quota.admit("batch") is None
    quota.spend("batch", 10)
    refusal = quota.admit("batch")
    assert refusal is not None and refusal.quota == "tokens_per_day"
    assert refusal.wait_s == pytest.approx(12 * 3600)
    assert quota.admit("web") is not None  # still within web's minute
    clock.advance(60)
    assert quota.admit("web") is None


def test_a_request_refused_for_tokens_spends_none_of_the_minute() -> None:
    clock = Clock()
    quota = book({"a": Quotas(requests_per_minute=1, tokens_per_day=10)}, clock, {"a": 10})
    refusal = quota.admit("a")
    assert refusal is not None and refusal.quota == "tokens_per_day"
    clock.advance(24 * 3600)  # a new day: the minute's one request is still free
    assert quota.admit("a") is None


def test_the_key_names_its_client_and_an_unknown_key_none() -> None:
    keys = [("web", b"sk-web-0123"), ("default", b"sk-ops-4567")]
    assert identify(b"sk-web-0123", keys) == "web"
    assert identify(b"sk-ops-4567", keys) == "default"
    assert identify(b"sk-web-012", keys) is None
    assert identify(b"", keys) is None


def test_usage_rows_add_up_per_client_since_a_time(tmp_path: Path) -> None:
    log = UsageLog(tmp_path)
    rows = [
        ("web", 10, 5, "2026-12-05T23:59:59.000+00:00"),
        ("web", 7, 3, "2026-12-06T08:00:00.000+00:00"),
        ("batch", 100, 20, "2026-12-06T09:00:00.000+00:00"),
        ("web", 1, 1, "2026-12-06T10:00:00.000+00:00"),
    ]
    for client, prompt, completion, time in rows:
        data = row(client, "/v1/chat/completions", 200, RequestUsage(prompt, completion), "m@1")
        log.append({**data, "time": time})
    with (tmp_path / "2026-12-06.jsonl").open("a") as handle:
        handle.write('{"time": "2026-12-06T11:00:0')  # cut short by a crash: skipped
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == [
        "2026-12-05.jsonl",
        "2026-12-06.jsonl",
    ]
    everything = totals(tmp_path)
    assert {k: v.as_dict() for k, v in everything.items()} == {
        "batch": {
            "requests": 1,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
        },
        "web": {"requests": 3, "prompt_tokens": 18, "completion_tokens": 9, "total_tokens": 27},
    }
    since = datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
    assert [r["client"] for r in read_rows(tmp_path, since)] == ["batch", "web"]
    assert tokens_today(tmp_path, NOON) == {"batch": 120, "web": 12}
    assert json.loads((tmp_path / "2026-12-05.jsonl").read_text())["route"] == (
        "/v1/chat/completions"
    )


def test_client_keys_come_from_the_environment_and_must_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = ServeConfig.model_validate(
        {
            "name": "s",
            "model_version": "s@1",
            "model_dir": "/m",
            "api_key_env": "K_OPS",
            "clients": [
                {"name": "web", "key_env": "K_WEB", "quotas": {"requests_per_minute": 5}},
                {"name": "batch", "key_env": "K_BATCH"},
            ],
        }
    )
    assert cfg.keyed()
    monkeypatch.setenv("K_OPS", "sk-ops")
    monkeypatch.setenv("K_WEB", "sk-web")
    with pytest.raises(ConfigError, match=r"clients\[1\].key_env: .*K_BATCH is not set"):
        cfg.client_keys()
    monkeypatch.setenv("K_BATCH", "sk-web")
    with pytest.raises(ConfigError, match="'batch' has the same key as 'web'") as err:
        cfg.client_keys()
    assert "sk-web" not in str(err.value)
    monkeypatch.setenv("K_BATCH", "sk-batch")
    assert cfg.client_keys() == {"default": "sk-ops", "web": "sk-web", "batch": "sk-batch"}


@pytest.mark.parametrize(
    ("clients", "words"),
    [
        ([{"name": "web", "key_env": "A"}, {"name": "web", "key_env": "B"}], "'web' is taken"),
        ([{"name": "default", "key_env": "A"}], "'default' is taken"),
        ([{"name": "anonymous", "key_env": "A"}], "'anonymous' is taken"),
        ([{"name": "web", "key_env": "K_OPS"}], "K_OPS is another client's variable"),
    ],
)
def test_a_bad_client_list_is_refused(clients: list[dict], words: str) -> None:
    data = {"name": "s", "model_version": "s@1", "model_dir": "/m", "api_key_env": "K_OPS"}
    with pytest.raises(ConfigError, match=words):
        parse_config(json.dumps({**data, "clients": clients}), "cfg.json")
