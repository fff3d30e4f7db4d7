"""Publishing, pure parts: reading the GitHub Actions environment and fitting the comment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.publish import (
    COMMENT_LIMIT,
    DEFAULT_MARKER,
    GateStatus,
    PublishError,
    context_from_environment,
    fit_comment,
)

HEAD = "0123456789abcdef0123456789abcdef01234567"
MERGE = "f" * 40


def actions_env(tmp_path: Path, event: dict, name: str = "pull_request") -> dict[str, str]:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return {
        "GITHUB_TOKEN": "ghs_abc",
        "GITHUB_REPOSITORY": "acme/llm-specs",
        "GITHUB_EVENT_PATH": str(path),
        "GITHUB_EVENT_NAME": name,
        "GITHUB_SHA": MERGE,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "42",
    }


PULL_EVENT = {"number": 7, "pull_request": {"number": 7, "head": {"sha": HEAD}}}


def test_a_pull_request_run_gives_the_pull_and_its_head_commit(tmp_path: Path) -> None:
    context = context_from_environment(actions_env(tmp_path, PULL_EVENT))
    assert context.repository == "acme/llm-specs" and context.token == "ghs_abc"
    assert context.api_url == "https://api.github.com"
    # GITHUB_SHA is the merge commit on pull_request events; statuses go on the head.
    assert context.pull_number == 7 and context.sha == HEAD
    assert context.run_url == "https://github.com/acme/llm-specs/actions/runs/42"
    assert "ghs_abc" not in repr(context)


def test_explicit_values_win_and_an_enterprise_api_url_is_kept(tmp_path: Path) -> None:
    env = actions_env(tmp_path, PULL_EVENT) | {"GITHUB_API_URL": "https://ghe.acme.test/api/v3/"}
    context = context_from_environment(env, pull_number=9, sha="B" * 40)
    assert context.pull_number == 9 and context.sha == "b" * 40
    assert context.api_url == "https://ghe.acme.test/api/v3"


def test_a_missing_token_says_how_to_give_one(tmp_path: Path) -> None:
    env = actions_env(tmp_path, PULL_EVENT)
    del env["GITHUB_TOKEN"]
    with pytest.raises(PublishError) as caught:
        context_from_environment(env)
    assert str(caught.value) == (
        "cannot publish to GitHub: GITHUB_TOKEN is not set; in a workflow add "
        "`env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}` to the step (pull requests from forks "
        "get no write token, so they cannot post), or export a personal access token"
    )


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PublishError) as caught:
        context_from_environment({"GITHUB_REPOSITORY": "llm-specs", "GITHUB_API_URL": "ghe"})
    lines = str(caught.value).splitlines()
    assert lines[0] == "cannot publish to GitHub:"
    assert [line.split(";")[0].split(":")[0] for line in lines[1:]] == [
        "  - GITHUB_TOKEN is not set",
        "  - GITHUB_REPOSITORY is 'llm-specs'",
        "  - GITHUB_API_URL 'ghe' is not an http(s) URL",
        "  - no pull request number",
        "  - no commit SHA",
    ]


def test_a_push_event_has_no_pull_request_but_its_commit(tmp_path: Path) -> None:
    env = actions_env(tmp_path, {"ref": "refs/heads/main", "after": MERGE}, name="push")
    with pytest.raises(PublishError, match=r"holds a push event, not pull_request.*--pull"):
        context_from_environment(env)
    context = context_from_environment(env, need_pull=False)
    assert context.pull_number is None and context.sha == MERGE


def test_an_unreadable_event_file_is_named(tmp_path: Path) -> None:
    env = actions_env(tmp_path, PULL_EVENT)
    Path(env["GITHUB_EVENT_PATH"]).write_text("{not json")
    with pytest.raises(PublishError, match=r"GITHUB_EVENT_PATH is .*event.json, which is not JSON"):
        context_from_environment(env, pull_number=7, sha=HEAD)
    env["GITHUB_EVENT_PATH"] = str(tmp_path / "missing.json")
    with pytest.raises(PublishError, match=r"missing.json, which cannot be read"):
        context_from_environment(env, pull_number=7, sha=HEAD)


def test_a_short_commit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match=r"commit 'abc123' is not a full SHA"):
        context_from_environment(actions_env(tmp_path, PULL_EVENT), sha="abc123")


def test_a_report_that_fits_is_posted_whole_after_the_marker() -> None:
    assert fit_comment("# report\n") == f"{DEFAULT_MARKER}\n# report\n"


def test_a_cut_inside_a_code_block_closes_it_and_points_to_the_full_report() -> None:
    markdown = "# report\n\n```text\n" + "\n".join(f"step {i} loss 1.{i:04d}" for i in range(9000))
    body = fit_comment(markdown, full_report_url="https://example.test/run/1")
    assert len(body) <= COMMENT_LIMIT < len(markdown)
    kept, note = body.split("\n\n---\n")
    assert kept.endswith("\n```") and kept.count("```") == 2
    assert note.startswith("> **Report truncated**: GitHub comments hold at most 65536")
    assert "https://example.test/run/1" in note
    shown = int(note.split("showing ")[1].split(" of ")[0])
    assert kept == f"{DEFAULT_MARKER}\n{markdown[:shown]}\n```"


def test_without_a_link_the_note_points_to_the_artifact() -> None:
    body = fit_comment("x" * (COMMENT_LIMIT + 10))
    assert len(body) <= COMMENT_LIMIT and "`report` artifact" in body


def test_a_status_state_outside_githubs_four_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'passed' is not one of success, failure"):
        GateStatus("llmops/plan", "passed", "ok")  # type: ignore[arg-type]
