"""Issue 27, classes 3, 6 and 11 against the serving runtime as a real process on 127.0.0.1
with the tiny model: kserve's own routes behind the key, cross-site and DNS-rebinding
requests refused, non-JSON bodies refused, feedback throttled."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serving import Runtime, config, running

NAME = "guarded"
KEY = "sk-llmops-security-0123456789abcdef"
CHAT = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
SMOKE = {"prompts": ["hi"], "max_tokens": 4}
# Liveness and readiness stay open: probes (kubelet, docker HEALTHCHECK, the local rollout)
# carry no key. Everything else kserve's app serves needs it.
OPEN = ["/", "/v2/health/live", "/v2/health/ready"]
GUARDED = [
    "/metrics",
    "/v2",
    "/v2/models",
    f"/v2/models/{NAME}",
    f"/v2/models/{NAME}/ready",
    "/openapi.json",
]


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    cfg = config(NAME, tiny_model, api_key_env="LLMOPS_SECURITY_KEY", smoke=SMOKE)
    with running(cfg, tmp_path_factory.mktemp("keyed"), env={"LLMOPS_SECURITY_KEY": KEY}) as rt:
        yield rt


@pytest.fixture(scope="module")
def keyless(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("keyless")
    cfg = config(
        NAME,
        tiny_model,
        smoke=SMOKE,
        collect={"enabled": True, "dir": str(folder / "collected"), "seed": 0},
    )
    with running(cfg, folder) as runtime:
        yield runtime


def rows(runtime: Runtime) -> list[dict]:
    folder = Path(runtime.cfg["collect"]["dir"])
    return [json.loads(line) for p in folder.glob("*.jsonl") for line in p.read_text().splitlines()]


# Class 3: unauthenticated serving routes.


@pytest.mark.parametrize("path", OPEN)
def test_liveness_and_readiness_answer_without_the_key(keyed: Runtime, path: str) -> None:
    assert httpx.get(f"{keyed.url}{path}").status_code == 200


@pytest.mark.parametrize("path", GUARDED)
def test_kserve_routes_and_metrics_need_the_key(keyed: Runtime, path: str) -> None:
    refused = httpx.get(f"{keyed.url}{path}")
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{keyed.url}{path}", headers=bearer()).status_code == 200


def test_an_unknown_path_is_refused_without_the_key_not_404(keyed: Runtime) -> None:
    """Deny by default: a route a later kserve adds is guarded before anyone lists it."""
    assert httpx.get(f"{keyed.url}/v3/anything").status_code == 401
    assert httpx.get(f"{keyed.url}/v3/anything", headers=bearer()).status_code == 404


def test_unload_without_the_key_is_refused_and_readiness_stays(keyed: Runtime) -> None:
    """Before: 200, and /v2/health/ready answered 503 from then on (the deployment was down
    until restarted). Runs last in this module: with the key it really unloads."""
    unload = f"{keyed.url}/v2/repository/models/{NAME}/unload"
    refused = httpx.post(unload)
    assert refused.status_code == 401, refused.text
    assert httpx.get(f"{keyed.url}/v2/health/ready").status_code == 200
    assert httpx.post(unload, headers=bearer()).status_code == 200
    assert httpx.get(f"{keyed.url}/v2/health/ready").status_code == 503


# Class 6: cross-site requests against a keyless server on loopback.


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_chat_request_a_web_page_could_send_is_refused_415(
    keyless: Runtime, content_type: str
) -> None:
    """A page on any site may POST these types without a preflight (a "simple" request)."""
    refused = httpx.post(
        f"{keyless.url}/v1/chat/completions",
        content=json.dumps(CHAT),
        headers={"Content-Type": content_type},
    )
    assert refused.status_code == 415, refused.text
    assert "application/json" in refused.json()["error"]["message"]


def test_feedback_a_web_page_could_send_is_refused_and_writes_no_row(keyless: Runtime) -> None:
    planted = "PLANTED-BY-ANOTHER-SITE"
    body = {"id": "chatcmpl-x", "rating": "down", "correction": planted}
    refused = httpx.post(
        f"{keyless.url}/v1/feedback",
        content=json.dumps(body),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert refused.status_code == 415, refused.text
    assert not any(r.get("correction") == planted for r in rows(keyless))
    accepted = httpx.post(f"{keyless.url}/v1/feedback", json=body)  # a real client: JSON
    assert accepted.status_code == 200 and accepted.json()["recorded"] is True


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io"])
def test_a_dns_rebinding_request_is_refused_by_host(keyless: Runtime, host: str) -> None:
    """A name the attacker re-points at 127.0.0.1 makes the page same-origin with the server;
    only the Host header still shows the name."""
    read = httpx.get(f"{keyless.url}/v1/models", headers={"Host": host})
    assert read.status_code == 403, read.text
    chat = httpx.post(f"{keyless.url}/v1/chat/completions", json=CHAT, headers={"Host": host})
    assert chat.status_code == 403 and "Host" in chat.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "null-origin", "sec-fetch-site"],
)
def test_a_cross_origin_browser_request_is_refused(
    keyless: Runtime, headers: dict[str, str]
) -> None:
    answer = httpx.post(f"{keyless.url}/v1/chat/completions", json=CHAT, headers=headers)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "cross_origin"


def test_same_origin_and_plain_clients_still_work(keyless: Runtime) -> None:
    port = keyless.cfg["port"]
    for headers in (
        {},
        {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
        {"Host": f"localhost:{port}"},
    ):
        answer = httpx.post(f"{keyless.url}/v1/chat/completions", json=CHAT, headers=headers)
        assert answer.status_code == 200, (headers, answer.text)


# Class 11: feedback is throttled per client.


def test_feedback_beyond_the_rate_answers_429(keyless: Runtime) -> None:
    body = {"id": "chatcmpl-flood", "rating": "up"}
    started = time.monotonic()
    answers = [httpx.post(f"{keyless.url}/v1/feedback", json=body, timeout=30) for _ in range(80)]
    elapsed = time.monotonic() - started
    statuses = [answer.status_code for answer in answers]
    assert statuses[0] == 200
    assert 429 in statuses, statuses
    # The bucket refills while the requests run (slowly, on a loaded runner), so a request
    # after the first refusal may be accepted again: judge the refusals themselves.
    refused = [answer for answer in answers if answer.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # At most the burst (30) plus what one call per second refilled while they ran.
    assert statuses.count(200) <= 30 + math.ceil(elapsed) + 1, (elapsed, statuses)
    stored = [r for r in rows(keyless) if r["id"] == "chatcmpl-flood"]
    assert len(stored) == statuses.count(200)


def test_a_keyed_application_sending_its_users_feedback_is_not_throttled(keyed: Runtime) -> None:
    """With a key, the caller is the application the key was given to; it relays many users'
    feedback from one address, so the per-address bucket does not apply."""
    body = {"id": "chatcmpl-app", "rating": "up"}
    auth = {"Authorization": f"Bearer {KEY}"}
    statuses = [
        httpx.post(f"{keyed.url}/v1/feedback", json=body, headers=auth, timeout=30).status_code
        for _ in range(60)
    ]
    assert set(statuses) == {200}, statuses
