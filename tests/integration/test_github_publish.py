"""Publishing to GitHub through github3.py against a REST API stand-in on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.publish import (
    COMMENT_LIMIT,
    DEFAULT_MARKER,
    PLAN_CONTEXT,
    GateStatus,
    PublishError,
    context_from_environment,
    gate_context,
    post_report,
    publish,
    set_statuses,
)
from tests.fake_github import FakeGitHub
from tests.servers import serve

SHA = "a" * 40


def post(fake: FakeGitHub, url: str, markdown: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return post_report(
        markdown,
        repository=f"{fake.owner}/{fake.name}",
        pull_number=7,
        token=fake.token,
        api_url=url,
        **kwargs,  # type: ignore[arg-type]
    )


def test_first_post_creates_the_comment_later_posts_update_it_and_leave_others_alone() -> None:
    fake = FakeGitHub()
    alice = fake.add_comment(7, "Looks good, but what about the eval?", "alice")
    # Someone pasting our raw comment: it holds the marker but is not ours to edit.
    bob = fake.add_comment(7, f"{DEFAULT_MARKER}\nold numbers, quoted", "bob")
    with serve(fake.handler()) as url:
        first = post(fake, url, "# llmops report\n\nrun 1")
        second = post(fake, url, "# llmops report\n\nrun 2")
        before = len(fake.requests)
        third = post(fake, url, "# llmops report\n\nrun 2")

    assert first.created and not second.created and not third.created
    assert first.id == second.id == third.id
    assert first.url.endswith(f"/pull/7#issuecomment-{first.id}")
    ours = [c for c in fake.comments_on(7) if c["login"] == fake.token_login]
    assert len(ours) == 1 and len(fake.comments_on(7)) == 3
    assert ours[0]["body"] == f"{DEFAULT_MARKER}\n# llmops report\n\nrun 2"
    assert fake.comments[alice]["body"] == "Looks good, but what about the eval?"
    assert fake.comments[bob]["body"] == f"{DEFAULT_MARKER}\nold numbers, quoted"
    writes = [(r.method, r.path) for r in fake.writes()]
    comments = f"/repos/{fake.owner}/{fake.name}/issues"
    assert writes == [
        ("POST", f"{comments}/7/comments"),
        ("PATCH", f"{comments}/comments/{first.id}"),
    ]
    # An unchanged report is not sent again.
    assert all(r.method == "GET" for r in fake.requests[before:])


def test_the_comment_is_found_past_the_first_page() -> None:
    fake = FakeGitHub()
    for i in range(130):
        fake.add_comment(7, f"comment {i}", "carol")
    earlier = fake.add_comment(7, f"{DEFAULT_MARKER}\nfrom yesterday", fake.token_login)
    fake.add_comment(7, "after it", "carol")
    with serve(fake.handler()) as url:
        posted = post(fake, url, "today")

    assert not posted.created and posted.id == earlier
    assert fake.comments[earlier]["body"] == f"{DEFAULT_MARKER}\ntoday"
    assert len(fake.comments_on(7)) == 132


def test_with_the_actions_token_the_bots_comment_is_ours_and_a_persons_is_not() -> None:
    fake = FakeGitHub(installation_token=True)
    person = fake.add_comment(7, f"{DEFAULT_MARKER}\nhand-written", "alice")
    with serve(fake.handler()) as url:
        first = post(fake, url, "v1")
        second = post(fake, url, "v2")

    assert first.created and second.id == first.id and not second.created
    assert fake.comments[first.id]["login"] == "github-actions[bot]"
    assert fake.comments[first.id]["body"] == f"{DEFAULT_MARKER}\nv2"
    assert fake.comments[person]["body"] == f"{DEFAULT_MARKER}\nhand-written"


def test_a_report_too_long_for_github_is_cut_with_a_pointer_to_the_full_one() -> None:
    fake = FakeGitHub()
    rows = "\n".join(f"| task-{i} | accuracy | 0.{i % 97:02d} |" for i in range(4000))
    markdown = f"# llmops report\n\n| task | metric | value |\n|---|---|---|\n{rows}\n"
    assert len(markdown) > COMMENT_LIMIT
    run = "https://github.com/acme/llm-specs/actions/runs/42"
    with serve(fake.handler()) as url:
        posted = post(fake, url, markdown, full_report_url=run)

    body = fake.comments[posted.id]["body"]
    assert len(body) <= COMMENT_LIMIT
    assert "**Report truncated**" in body and run in body
    kept = body.split("\n\n---\n> **Report truncated**")[0]
    assert kept.endswith("|") and markdown.startswith(kept.removeprefix(DEFAULT_MARKER + "\n"))


def test_a_status_is_set_per_gate_with_its_state() -> None:
    fake = FakeGitHub()
    statuses = [
        GateStatus(
            gate_context("support-regression", "faq", "exact_match"),
            "success",
            "0.62 vs 0.55 baseline (+0.07, 95% CI +0.02..+0.12)",
            "https://github.com/acme/llm-specs/actions/runs/42",
        ),
        GateStatus(
            gate_context("support-regression", "latency", "p95_ms"),
            "failure",
            "p95 latency rose by 40% (gate: at most +10%) " * 6,
        ),
        GateStatus(PLAN_CONTEXT, "pending", "3 actions: 1 train, 2 evaluate"),
    ]
    with serve(fake.handler()) as url:
        set_statuses(statuses, repository="acme/llm-specs", sha=SHA, token=fake.token, api_url=url)

    recorded = {s["context"]: s for s in fake.statuses[SHA]}
    assert {c: s["state"] for c, s in recorded.items()} == {
        "llmops/gate/support-regression/faq/exact_match": "success",
        "llmops/gate/support-regression/latency/p95_ms": "failure",
        "llmops/plan": "pending",
    }
    faq = recorded["llmops/gate/support-regression/faq/exact_match"]
    assert faq["target_url"] == "https://github.com/acme/llm-specs/actions/runs/42"
    long = recorded["llmops/gate/support-regression/latency/p95_ms"]["description"]
    assert len(long) <= 140 and long.endswith("…") and long.startswith("p95 latency rose")


def test_a_bad_token_is_one_clear_error_and_nothing_is_written() -> None:
    fake = FakeGitHub()
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        post_report("x", repository="acme/llm-specs", pull_number=7, token="ghp_wrong", api_url=url)
    message = str(caught.value)
    assert message.startswith("GitHub refused the token (401 Bad credentials)")
    assert "GITHUB_TOKEN" in message and "ghp_wrong" not in message and "\n" not in message
    assert fake.writes() == [] and fake.comments == {}

    with serve(fake.handler()) as url, pytest.raises(PublishError, match=r"refused the token"):
        set_statuses(
            [GateStatus(PLAN_CONTEXT, "success", "ok")],
            repository="acme/llm-specs",
            sha=SHA,
            token="ghp_wrong",
            api_url=url,
        )
    assert fake.statuses == {}


def test_missing_pull_request_unknown_commit_and_read_only_token_are_clear_errors() -> None:
    fake = FakeGitHub()
    with serve(fake.handler()) as url:
        with pytest.raises(PublishError, match=r"found nothing \(404\).*acme/llm-specs#99"):
            post_report(
                "x", repository="acme/llm-specs", pull_number=99, token=fake.token, api_url=url
            )
        with pytest.raises(PublishError, match=r"found nothing \(404\).*acme/other"):
            set_statuses(
                [GateStatus(PLAN_CONTEXT, "success", "ok")],
                repository="acme/other",
                sha=SHA,
                token=fake.token,
                api_url=url,
            )
        with pytest.raises(PublishError, match=r"422 No commit found for SHA: b{40}"):
            set_statuses(
                [GateStatus(PLAN_CONTEXT, "success", "ok")],
                repository="acme/llm-specs",
                sha="b" * 40,
                token=fake.token,
                api_url=url,
            )


def test_a_read_only_token_gets_one_line_naming_the_permissions() -> None:
    # A fork's pull request runs with a read-only token: GitHub answers 403 to every write.
    fake = FakeGitHub(installation_token=True, read_only=True)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        post(fake, url, "x")
    message = str(caught.value)
    assert message.startswith(
        "GitHub forbade posting the report comment on acme/llm-specs#7 "
        "(403 Resource not accessible by integration)"
    )
    assert "pull-requests: write" in message and "\n" not in message
    assert fake.comments == {}


def test_a_spent_rate_limit_says_when_it_resets() -> None:
    fake = FakeGitHub(rate_limited=True)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        post(fake, url, "x")
    assert str(caught.value) == (
        "GitHub's API rate limit is used up (403) while reading the comments of "
        "acme/llm-specs#7; it resets at 04:00 UTC"
    )


def test_an_unreachable_api_is_named() -> None:
    fake = FakeGitHub()
    with serve(fake.handler()) as url:
        pass
    with pytest.raises(PublishError, match=rf"could not reach GitHub at {url} while reading"):
        post(fake, url, "x")


def test_publish_posts_the_comment_linking_the_run_and_sets_the_statuses(tmp_path: Path) -> None:
    fake = FakeGitHub()
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7, "head": {"sha": SHA}}}))
    gates = [GateStatus(gate_context("s", "t", "m"), "failure", "0.40 < 0.50")]
    with serve(fake.handler()) as url:
        env = {
            "GITHUB_TOKEN": fake.token,
            "GITHUB_REPOSITORY": "acme/llm-specs",
            "GITHUB_API_URL": url,
            "GITHUB_EVENT_PATH": str(event),
            "GITHUB_RUN_ID": "42",
        }
        posted = publish("x" * (COMMENT_LIMIT + 1), gates, context_from_environment(env))

    assert "https://github.com/acme/llm-specs/actions/runs/42" in fake.comments[posted.id]["body"]
    assert [(s["context"], s["state"]) for s in fake.statuses[SHA]] == [
        ("llmops/gate/s/t/m", "failure")
    ]
