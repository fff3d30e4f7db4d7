"""Issue 27, class 6 against the dashboard: `llmops ui` as a real process on 127.0.0.1 refuses
DNS-rebinding Hosts, cross-origin browser requests and body types a page on another site
could post, and still serves its own pages and its own form posts."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.ui_repo import dashboard_server


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("repo")
    (root / "specs").mkdir()
    with dashboard_server(root) as url:
        yield url


VOTE = "/arena/duel/vote"
FORM = {"battle": "1", "choice": "a", "token": "x"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765"])
def test_a_dns_rebinding_name_is_refused(dashboard: str, host: str) -> None:
    """Before: 200 for every page and the vote form, token included, to the rebound name."""
    page = httpx.get(f"{dashboard}/favicon.ico", headers={"Host": host})
    assert page.status_code == 403, page.text
    assert "DNS rebinding" in page.text
    vote = httpx.post(f"{dashboard}{VOTE}", data=FORM, headers={"Host": host})
    assert vote.status_code == 403


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "null-origin", "sec-fetch-site"],
)
def test_a_cross_origin_request_is_refused(dashboard: str, headers: dict[str, str]) -> None:
    assert httpx.get(f"{dashboard}/favicon.ico", headers=headers).status_code == 403
    vote = httpx.post(f"{dashboard}{VOTE}", data=FORM, headers=headers)
    assert vote.status_code == 403 and "cross-" in vote.text


def test_a_text_plain_post_is_refused_415(dashboard: str) -> None:
    answer = httpx.post(
        f"{dashboard}{VOTE}",
        content="battle=1&choice=a&token=x",
        headers={"Content-Type": "text/plain"},
    )
    assert answer.status_code == 415, answer.text


def test_its_own_pages_and_form_posts_still_pass(dashboard: str) -> None:
    port = dashboard.rsplit(":", 1)[1]
    assert httpx.get(f"{dashboard}/favicon.ico").status_code == 204
    assert httpx.get(f"{dashboard}/favicon.ico", headers={"Host": f"localhost:{port}"}).is_success
    own = {"Origin": dashboard, "Sec-Fetch-Site": "same-origin"}
    vote = httpx.post(f"{dashboard}{VOTE}", data=FORM, headers=own)
    # Past the origin check, the vote route itself answers (a stale form token here).
    assert vote.status_code not in (415,) and "cross-" not in vote.text
    assert "DNS rebinding" not in vote.text
