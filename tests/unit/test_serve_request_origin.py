"""Request-origin checks and the feedback bucket, as pure functions of a request's scope."""

from __future__ import annotations

from typing import Any

import pytest

from runners.serve.request_origin import FORM, JSON, RequestOriginMiddleware, split_host
from runners.serve.throttle import ClientBuckets, client_key


def scope(
    headers: dict[str, str], method: str = "GET", server: tuple[str, int] = ("127.0.0.1", 8000)
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "server": server,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


CHECK = RequestOriginMiddleware(None, allowed_hosts=["llm.internal"]).check


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.1", "llm.internal", "a.localhost"],
)
def test_loopback_names_on_the_bound_port_pass(host: str) -> None:
    assert CHECK(scope({"Host": host})) is None


@pytest.mark.parametrize(
    "host", ["evil.example", "127.0.0.1:9999", "localhost:80", "127.0.0.1.nip.io", "[::1", "x:y"]
)
def test_other_hosts_on_a_loopback_connection_are_refused(host: str) -> None:
    refused = CHECK(scope({"Host": host}))
    assert refused is not None and refused[:2] == (403, "host_not_allowed")


def test_a_connection_to_a_network_address_is_not_host_checked() -> None:
    assert CHECK(scope({"Host": "assistant.svc:8080"}, server=("10.0.0.5", 8080))) is None


def test_origin_and_fetch_metadata() -> None:
    own = {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"}
    assert CHECK(scope(own)) is None
    assert CHECK(scope({**own, "Origin": "http://localhost:8000"}))[1] == "cross_origin"  # type: ignore[index]
    assert CHECK(scope({"Sec-Fetch-Site": "cross-site"}))[1] == "cross_origin"  # type: ignore[index]
    assert CHECK(scope({"Sec-Fetch-Site": "same-origin"})) is None
    allowed = RequestOriginMiddleware(None, allowed_origins=["https://app.example/"]).check
    assert allowed(scope({"Origin": "https://app.example", "Sec-Fetch-Site": "cross-site"})) is None


def test_bodies_must_have_an_allowed_type() -> None:
    def post(content_type: str | None, length: str = "2") -> dict[str, Any]:
        headers = {"Content-Length": length}
        if content_type:
            headers["Content-Type"] = content_type
        return scope(headers, method="POST")

    assert CHECK(post("application/json; charset=utf-8")) is None
    assert CHECK(post(None, length="0")) is None  # no body: nothing to type
    for kind in ("text/plain", FORM, None):
        assert CHECK(post(kind))[0] == 415  # type: ignore[index]
    form = RequestOriginMiddleware(None, body_types=(FORM, JSON)).check
    assert form(post(FORM)) is None


def test_split_host() -> None:
    assert split_host("[::1]:80") == ("::1", 80)
    assert split_host("Example.COM") == ("example.com", None)
    assert split_host(":80") is None and split_host("a:0") is None


def test_the_bucket_refills_at_its_rate_and_keys_ipv6_by_64() -> None:
    now = [0.0]
    buckets = ClientBuckets(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("10.0.0.1") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("10.0.0.1") == pytest.approx(0.5)
    assert buckets.take("10.0.0.2") == 0  # another client has its own bucket
    now[0] += 0.5
    assert buckets.take("10.0.0.1") == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
