"""Pull requests and failed-run issues through github3.py against the REST API stand-in."""

from __future__ import annotations

from typing import Any

import github3
import pytest

from controller.publish import (
    COMMENT_LIMIT,
    DEFAULT_MARKER,
    GitHubContext,
    PublishError,
    open_or_update_pull_request,
    report_failed_run,
    repository_from_environment,
)
from controller.publish.pull_requests import pipeline_marker
from tests.fake_github import FakeGitHub, Reply, fake_sha
from tests.servers import serve

SHA = "a" * 40
HEAD = "llmops/pipeline/support-retrain/3f9c2a1b"
RUN = "https://github.com/acme/llm-specs/actions/runs/42"
REPO = "/repos/acme/llm-specs"


def context(fake: FakeGitHub, url: str, token: str | None = None) -> GitHubContext:
    return repository_from_environment(
        {
            "GITHUB_TOKEN": token or fake.token,
            "GITHUB_REPOSITORY": f"{fake.owner}/{fake.name}",
            "GITHUB_API_URL": url,
            "GITHUB_RUN_ID": "42",
        }
    )


def promote(fake: FakeGitHub, url: str, body: str = "report", **kwargs: Any):  # type: ignore[no-untyped-def]
    arguments: dict[str, Any] = {
        "title": "Promote support-assistant: new data (37 rows)",
        "body": body,
        "reviewers": [],
        "labels": [],
        **kwargs,
    }
    return open_or_update_pull_request(context(fake, url), HEAD, "main", **arguments)


def with_branch(**kwargs: Any) -> FakeGitHub:
    fake = FakeGitHub(**kwargs)
    fake.branches[HEAD] = fake_sha(HEAD)
    return fake


def test_the_context_of_a_scheduled_run_needs_no_pull_request() -> None:
    got = repository_from_environment(
        {"GITHUB_TOKEN": "t", "GITHUB_REPOSITORY": "acme/llm-specs", "GITHUB_SHA": "A" * 40}
    )
    assert (got.repository, got.api_url, got.pull_number, got.sha) == (
        "acme/llm-specs",
        "https://api.github.com",
        None,
        "a" * 40,
    )
    with pytest.raises(PublishError, match=r"GITHUB_TOKEN is not set.*\n.*GITHUB_REPOSITORY"):
        repository_from_environment({})


def test_the_first_run_opens_the_pull_request_and_a_rerun_updates_it() -> None:
    fake = with_branch()
    fake.add_issue("Eval flakes on CPU", "seen twice")  # #8: issues and pulls share numbers
    closed = fake.add_pull(HEAD, title="An earlier promotion", state="closed")  # #9
    fake.add_pull("alice/docs", title="Docs")  # #10
    with serve(fake.handler()) as url:
        first = promote(
            fake,
            url,
            "# llmops report\n\nrun 1",
            reviewers=["alice", "acme/ml-reviewers", "alice"],
            labels=["llmops", "promotion"],
        )
        second = promote(
            fake,
            url,
            "# llmops report\n\nrun 2",
            title="Promote support-assistant: new data (52 rows)",
            reviewers=["alice", "acme/ml-reviewers"],
            labels=["llmops", "promotion"],
        )
        before = len(fake.requests)
        third = promote(
            fake,
            url,
            "# llmops report\n\nrun 2",
            title="Promote support-assistant: new data (52 rows)",
            reviewers=["alice", "acme/ml-reviewers"],
            labels=["llmops", "promotion"],
        )

    assert first.created and not second.created and not third.created
    assert first.number == second.number == third.number == 11
    assert first.url == "https://github.com/acme/llm-specs/pull/11"
    opened = [p for p in fake.open_pulls() if p["head"] == HEAD]
    assert [p["number"] for p in opened] == [11]
    assert fake.issues[closed]["title"] == "An earlier promotion"
    pull = fake.pull_requests[11]
    assert pull["title"] == "Promote support-assistant: new data (52 rows)"
    assert pull["body"] == f"{DEFAULT_MARKER}\n# llmops report\n\nrun 2"
    assert (pull["login"], pull["base"], pull["html_url"]) == ("llmops-ci", "main", first.url)
    assert pull["requested_reviewers"] == ["alice"]
    assert pull["requested_teams"] == ["ml-reviewers"]
    assert pull["labels"] == ["llmops", "promotion"]
    # Reviewers and labels once, when opened; the rerun only replaces title and body, and an
    # unchanged rerun writes nothing.
    assert [(r.method, r.path) for r in fake.writes()] == [
        ("POST", f"{REPO}/pulls"),
        ("POST", f"{REPO}/issues/11/labels"),
        ("POST", f"{REPO}/pulls/11/requested_reviewers"),
        ("PATCH", f"{REPO}/pulls/11"),
    ]
    assert all(r.method == "GET" for r in fake.requests[before:])
    lookup = next(r for r in fake.requests if r.path == f"{REPO}/pulls" and r.method == "GET")
    assert lookup.query["head"] == [f"acme:{HEAD}"] and lookup.query["state"] == ["open"]
    assert lookup.query["base"] == ["main"]


def test_a_plain_name_github_refuses_as_a_user_is_asked_as_a_team() -> None:
    fake = with_branch()
    with serve(fake.handler()) as url:
        outcome = promote(fake, url, reviewers=["bob", "ml-reviewers"])

    assert outcome.created
    pull = fake.pull_requests[outcome.number]
    assert pull["requested_reviewers"] == ["bob"] and pull["requested_teams"] == ["ml-reviewers"]
    asked = [r.body for r in fake.writes() if r.path.endswith("/requested_reviewers")]
    assert asked == [
        {"reviewers": ["bob", "ml-reviewers"]},  # refused as a whole
        {"reviewers": ["bob"]},
        {"reviewers": ["ml-reviewers"]},  # not a user
        {"team_reviewers": ["ml-reviewers"]},
    ]


def test_a_reviewer_github_cannot_ask_is_named_and_the_pull_request_stays_open() -> None:
    fake = with_branch()
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url, reviewers=["dave", "bob"], labels=["llmops"])
    message = str(caught.value)
    assert message.startswith(
        "GitHub rejected the request (422 Reviews may only be requested from collaborators."
    )
    assert "requesting a review from 'dave' on acme/llm-specs#8" in message
    assert "open at https://github.com/acme/llm-specs/pull/8" in message and "\n" not in message
    pull = fake.pull_requests[8]
    assert pull["requested_reviewers"] == ["bob"] and pull["labels"] == ["llmops"]


def test_a_team_of_another_organisation_is_refused_before_anything_is_written() -> None:
    fake = with_branch()
    with serve(fake.handler()) as url, pytest.raises(PublishError, match="a team of other"):
        promote(fake, url, reviewers=["other/ml-reviewers"])
    assert fake.requests == []


def test_a_head_branch_github_does_not_know_is_one_line_naming_it() -> None:
    fake = FakeGitHub()
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url)
    message = str(caught.value)
    assert message == (
        "GitHub rejected the request (422 Validation Failed: PullRequest head invalid) while "
        f"opening a pull request from {HEAD} into main on acme/llm-specs: GitHub has no branch "
        f"'{HEAD}'; push it to acme/llm-specs before opening its pull request"
    )
    assert list(fake.pull_requests) == [7]


def test_a_head_without_new_commits_says_there_is_nothing_to_propose() -> None:
    fake = FakeGitHub()
    fake.branches[HEAD] = fake.branches["main"]
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url)
    assert str(caught.value).endswith(
        f"No commits between main and {HEAD}) while opening a pull request from {HEAD} into "
        f"main on acme/llm-specs: {HEAD} holds nothing that main lacks, so there is nothing "
        "to propose"
    )


def test_a_pull_request_opened_meanwhile_is_updated_not_duplicated() -> None:
    class Racing(FakeGitHub):
        """The first lookup misses the pull request a concurrent run opens right after it."""

        def _list_pulls(self, base: str, path: str, query: dict[str, list[str]]) -> Reply:
            reply = super()._list_pulls(base, path, query)
            if 20 not in self.issues:
                self.issues[20] = self._new_issue(20, "Promote", "old", "llmops-ci", "User", [])
                self.issues[20]["pull"] = self._new_pull(HEAD, "main")
            return reply

    fake = Racing()
    fake.branches[HEAD] = fake_sha(HEAD)
    with serve(fake.handler()) as url:
        outcome = promote(fake, url, "from the second run")

    assert (outcome.number, outcome.created) == (20, False)
    assert fake.issues[20]["body"] == f"{DEFAULT_MARKER}\nfrom the second run"
    assert len(fake.open_pulls()) == 2


def test_a_body_over_githubs_limit_is_cut_with_a_pointer_to_the_run() -> None:
    fake = with_branch()
    rows = "\n".join(f"| task-{i} | rouge_l | 0.{i % 97:02d} |" for i in range(4000))
    with serve(fake.handler()) as url:
        outcome = promote(fake, url, f"# llmops report\n\n{rows}\n")

    body = fake.issues[outcome.number]["body"]
    assert len(body) <= COMMENT_LIMIT and body.startswith(DEFAULT_MARKER)
    assert "GitHub pull request bodies hold at most 65536 characters" in body and RUN in body


def test_a_bad_token_a_read_only_token_and_a_spent_rate_limit_are_one_line_each() -> None:
    fake = with_branch()
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        open_or_update_pull_request(
            context(fake, url, token="ghp_wrong"), HEAD, "main", "t", "b", [], []
        )
    message = str(caught.value)
    assert message.startswith("GitHub refused the token (401 Bad credentials) while looking")
    assert "GITHUB_TOKEN" in message and "ghp_wrong" not in message and "\n" not in message

    fake = with_branch(installation_token=True, read_only=True)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url)
    message = str(caught.value)
    assert message.startswith(
        f"GitHub forbade opening a pull request from {HEAD} into main on acme/llm-specs "
        "(403 Resource not accessible by integration); a workflow token needs "
        "`permissions: pull-requests: write`"
    )
    assert "\n" not in message

    fake = with_branch(installation_token=True, actions_can_open_pulls=False)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url)
    message = str(caught.value)
    assert "(403 GitHub Actions is not permitted to create or approve pull requests.)" in message
    assert "Allow GitHub Actions to create and approve pull requests" in message

    fake = with_branch(rate_limited=True)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        promote(fake, url)
    assert str(caught.value) == (
        "GitHub's API rate limit is used up (403) while looking for an open pull request from "
        f"{HEAD} into main on acme/llm-specs; it resets at 04:00 UTC"
    )
    assert fake.writes() == [] and list(fake.pull_requests) == [7]


def fail(fake: FakeGitHub, url: str, body: str, sha: str | None = SHA, **kwargs: Any):  # type: ignore[no-untyped-def]
    return report_failed_run(
        context(fake, url),
        sha,
        "llmops pipeline support-retrain: regression test failed",
        body,
        ["llmops", "regression"],
        pipeline="support-retrain",
        **kwargs,
    )


def test_a_failed_run_opens_an_issue_and_a_rerun_updates_it_with_a_failing_status() -> None:
    title = "llmops pipeline support-retrain: regression test failed"
    marker = pipeline_marker("support-retrain")
    fake = FakeGitHub()
    earlier = fake.add_issue(title, f"{marker}\nlast month", "github-actions[bot]", state="closed")
    person = fake.add_issue(title, "I saw this too", "carol")
    quoted = fake.add_issue(f"{title} (copy)", f"{marker}\nquoted", "carol")
    with serve(fake.handler()) as url:
        first = fail(fake, url, "gate support-regression/faq/rouge_l max_drop failed")
        for i in range(120):  # the issue is then past the first page (100, newest first)
            fake.add_issue(f"question {i}", None, "bob")
        fake.add_pull("alice/copy", title=title, body=f"{marker}\na pull request")
        second = fail(fake, url, "gate support-regression/faq/rouge_l max_drop failed again")

    assert first.created and not second.created and first.number == second.number
    assert first.url == f"https://github.com/acme/llm-specs/issues/{first.number}"
    ours = fake.issues[first.number]
    assert ours["body"] == f"{marker}\ngate support-regression/faq/rouge_l max_drop failed again"
    assert ours["labels"] == ["llmops", "regression"] and ours["title"] == title
    assert [i["number"] for i in fake.plain_issues("open") if marker in (i["body"] or "")] == [
        quoted,
        first.number,
    ]
    assert fake.issues[earlier]["body"] == f"{marker}\nlast month"
    assert fake.issues[person]["body"] == "I saw this too"
    assert first.status_context == "llmops/pipeline/support-retrain"
    assert [
        (s["context"], s["state"], s["target_url"], s["description"]) for s in fake.statuses[SHA]
    ] == [("llmops/pipeline/support-retrain", "failure", first.url, title)] * 2


def test_a_failed_run_without_a_commit_sets_no_status_and_a_bad_commit_writes_nothing() -> None:
    fake = FakeGitHub()
    with serve(fake.handler()) as url:
        outcome = fail(fake, url, "trigger failed", sha=None)
        with pytest.raises(PublishError, match="not a full SHA"):
            fail(fake, url, "x", sha="abc123")
    assert outcome.created and outcome.status_context is None and fake.statuses == {}
    assert len(fake.plain_issues()) == 1


def test_a_read_only_token_cannot_open_the_issue_and_is_told_the_permission() -> None:
    fake = FakeGitHub(installation_token=True, read_only=True)
    with serve(fake.handler()) as url, pytest.raises(PublishError) as caught:
        fail(fake, url, "x")
    assert "(403 Resource not accessible by integration)" in str(caught.value)
    assert "`permissions: issues: write`" in str(caught.value)
    assert fake.plain_issues() == [] and fake.statuses == {}


def test_the_stand_in_lists_issues_and_pull_requests_like_github() -> None:
    fake = FakeGitHub()
    bug = fake.add_issue("Crash", "trace", labels=["bug", "llmops"])
    fake.add_issue("Old", "done", labels=["llmops"], state="closed")
    with serve(fake.handler()) as url:
        client = github3.GitHub(token=fake.token)
        client.session.base_url = url
        repo = client.repository("acme", "llm-specs")
        open_issues = [i.number for i in repo.issues()]
        labelled = [i.number for i in repo.issues(state="all", labels="LLMOps,bug")]
        every = [i.number for i in repo.issues(state="all", labels="llmops")]
        pull = repo.pull_request(7)
        listed = [p.number for p in repo.pull_requests(state="all", head="acme:alice/change-7")]

    # Newest first; the pull request is an issue too.
    assert open_issues == [bug, 7] and labelled == [bug] and every == [bug + 1, bug]
    assert pull.head.ref == "alice/change-7" and pull.base.ref == "main" and listed == [7]
