"""Publishing, GitHub: one pull-request comment updated in place, and a commit status per gate.

The client, repository and error helpers (`github_client`, `split_repository`, `SHA_PATTERN`,
`github_errors`) are shared with `controller.publish.pull_requests`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlparse

import github3
import requests
from github3 import exceptions as gh

from runners.errors import LlmopsError

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_MARKER = "<!-- llmops-report -->"
PLAN_CONTEXT = "llmops/plan"
# GitHub refuses longer bodies: "Body is too long (maximum is 65536 characters)".
COMMENT_LIMIT = 65536
DESCRIPTION_LIMIT = 140
# Completes "a workflow token needs ..." when GitHub answers 403.
COMMENT_PERMISSIONS = (
    "`permissions: pull-requests: write` for the comment and `statuses: write` for statuses"
)

StatusState = Literal["success", "failure", "error", "pending"]
STATES: tuple[str, ...] = get_args(StatusState)

_REPOSITORY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*)/[A-Za-z0-9._-]+")
SHA_PATTERN = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TOKEN_HELP = (
    "in a workflow add `env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}` to the step "
    "(pull requests from forks get no write token, so they cannot post), "
    "or export a personal access token"
)


class PublishError(LlmopsError):
    """What GitHub or the environment refused, worded for people; the CLI prints it as is."""


@dataclass(frozen=True)
class PostedComment:
    url: str
    id: int
    created: bool


@dataclass(frozen=True)
class GateStatus:
    """One commit status: `context` names the gate, `description` is cut to 140 characters."""

    context: str
    state: StatusState
    description: str
    target_url: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"status state {self.state!r} is not one of {', '.join(STATES)}")
        if not self.context.strip():
            raise ValueError("a status needs a context, e.g. llmops/gate/<suite>/<task>/<metric>")


def gate_context(suite: str, task: str, metric: str) -> str:
    return f"llmops/gate/{suite}/{task}/{metric}"


@dataclass(frozen=True)
class GitHubContext:
    """Where to publish, read from a GitHub Actions environment."""

    token: str = field(repr=False)
    repository: str
    api_url: str = DEFAULT_API_URL
    pull_number: int | None = None
    sha: str | None = None
    run_url: str | None = None


def context_from_environment(
    env: Mapping[str, str] | None = None,
    *,
    pull_number: int | None = None,
    sha: str | None = None,
    need_pull: bool = True,
    need_sha: bool = True,
) -> GitHubContext:
    """GitHub Actions' variables and event file, with explicit overrides; every problem at once."""
    env = os.environ if env is None else env
    problems: list[str] = []
    token = env.get("GITHUB_TOKEN", "").strip()
    if not token:
        problems.append(f"GITHUB_TOKEN is not set; {_TOKEN_HELP}")
    repository = env.get("GITHUB_REPOSITORY", "").strip()
    if not repository:
        problems.append(
            "GITHUB_REPOSITORY is not set; GitHub Actions sets it, elsewhere export "
            "GITHUB_REPOSITORY=owner/name"
        )
    elif not _REPOSITORY.fullmatch(repository):
        problems.append(f"GITHUB_REPOSITORY is {repository!r}; expected 'owner/name'")
    api_url = env.get("GITHUB_API_URL", "").strip() or DEFAULT_API_URL
    if (url_problem := _api_url_problem(api_url)) is not None:
        problems.append(f"GITHUB_API_URL {url_problem}")

    event = _read_event(env.get("GITHUB_EVENT_PATH", "").strip(), problems)
    pull = event.get("pull_request")
    if isinstance(pull, dict):
        if pull_number is None and isinstance(pull.get("number"), int):
            pull_number = pull["number"]
        # The head commit, not GITHUB_SHA: on pull_request events that is a merge commit the
        # pull request page never shows statuses for.
        head = pull.get("head")
        if sha is None and isinstance(head, dict) and isinstance(head.get("sha"), str):
            sha = head["sha"]
    elif sha is None:
        sha = env.get("GITHUB_SHA", "").strip() or None

    where = _event_description(env)
    if pull_number is None and need_pull:
        problems.append(
            f"no pull request number: {where}; run in a pull_request workflow or pass --pull NUMBER"
        )
    elif pull_number is not None and pull_number < 1:
        problems.append(f"pull request number {pull_number} is not a positive number")
    if sha is None and need_sha:
        problems.append(f"no commit SHA: {where} and GITHUB_SHA is not set; pass --sha COMMIT")
    elif sha is not None and not SHA_PATTERN.fullmatch(sha.lower()):
        problems.append(f"commit {sha!r} is not a full SHA (40 hexadecimal characters)")

    if problems:
        if len(problems) == 1:
            raise PublishError(f"cannot publish to GitHub: {problems[0]}")
        raise PublishError(
            "cannot publish to GitHub:\n" + "\n".join(f"  - {problem}" for problem in problems)
        )
    server = env.get("GITHUB_SERVER_URL", "").strip() or "https://github.com"
    run_id = env.get("GITHUB_RUN_ID", "").strip()
    return GitHubContext(
        token=token,
        repository=repository,
        api_url=api_url.rstrip("/"),
        pull_number=pull_number,
        sha=sha.lower() if sha else None,
        run_url=f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}" if run_id else None,
    )


def _read_event(path: str, problems: list[str]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        problems.append(f"GITHUB_EVENT_PATH is {path}, which cannot be read ({err.strerror})")
        return {}
    except ValueError as err:
        problems.append(f"GITHUB_EVENT_PATH is {path}, which is not JSON ({err})")
        return {}
    return event if isinstance(event, dict) else {}


def _event_description(env: Mapping[str, str]) -> str:
    if not env.get("GITHUB_EVENT_PATH"):
        return "GITHUB_EVENT_PATH is not set"
    name = env.get("GITHUB_EVENT_NAME") or "non-pull-request"
    return f"GITHUB_EVENT_PATH holds a {name} event, not pull_request"


def fit_comment(
    markdown: str,
    *,
    marker: str = DEFAULT_MARKER,
    full_report_url: str | None = None,
    holder: str = "comments",
) -> str:
    """The comment body: the marker, then the report, cut at a line to GitHub's limit.

    `holder` names what is cut in the note ("comments", "pull request bodies", ...).
    """
    body = f"{marker}\n{markdown}"
    if len(body) <= COMMENT_LIMIT:
        return body
    where = (
        f"the full report is at {full_report_url}"
        if full_report_url
        else "the full report is in the workflow run's `report` artifact, or run `llmops report`"
    )

    def note(kept: int) -> str:
        return (
            f"\n\n---\n> **Report truncated**: GitHub {holder} hold at most {COMMENT_LIMIT} "
            f"characters; showing {kept} of {len(markdown)}; {where}.\n"
        )

    fence = "\n```"
    budget = COMMENT_LIMIT - len(marker) - 1 - len(note(len(markdown))) - len(fence)
    if budget < 1:
        raise PublishError("the comment marker and truncation note alone exceed GitHub's limit")
    kept = markdown[:budget]
    # Cut at a line so a table row or link is never half shown.
    if (newline := kept.rfind("\n")) > budget // 2:
        kept = kept[:newline]
    opened = sum(1 for line in kept.splitlines() if line.lstrip().startswith("```")) % 2 == 1
    return f"{marker}\n{kept}{fence if opened else ''}{note(len(kept))}"


def post_report(
    markdown: str,
    *,
    repository: str,
    pull_number: int,
    token: str,
    api_url: str = DEFAULT_API_URL,
    marker: str = DEFAULT_MARKER,
    full_report_url: str | None = None,
) -> PostedComment:
    """Create the report comment, or replace the body of the one a previous run posted.

    Ours is the first comment holding `marker` whose author is the token's user; an Actions or
    app token cannot read /user (403), and then ours is the one a bot wrote. Comments by anyone
    else are never edited, even when they quote the marker.
    """
    owner, name = split_repository(repository)
    if pull_number < 1:
        raise PublishError(f"pull request number {pull_number} is not a positive number")
    if not marker.strip():
        raise PublishError("the comment marker is empty; it is how a later run finds the comment")
    body = fit_comment(markdown, marker=marker, full_report_url=full_report_url)
    client = github_client(token, api_url)
    where = f"{repository}#{pull_number}"
    with github_errors(f"reading the comments of {where}", api_url):
        login = _token_login(client)
        issue = client.issue(owner, name, pull_number)
        ours = next((c for c in issue.comments() if _is_ours(c, login, marker)), None)
    if ours is None:
        with github_errors(f"posting the report comment on {where}", api_url):
            created = issue.create_comment(body)
        return PostedComment(url=created.html_url, id=created.id, created=True)
    if ours.body != body:
        with github_errors(f"updating report comment {ours.id} on {where}", api_url):
            ours.edit(body)
    return PostedComment(url=ours.html_url, id=ours.id, created=False)


def set_statuses(
    statuses: Sequence[GateStatus],
    *,
    repository: str,
    sha: str,
    token: str,
    api_url: str = DEFAULT_API_URL,
) -> None:
    """One commit status per gate (and `llmops/plan` when the list holds it)."""
    owner, name = split_repository(repository)
    if not SHA_PATTERN.fullmatch(sha.lower()):
        raise PublishError(
            f"commit {sha!r} is not a full SHA; statuses need the pull request's head commit "
            "(40 hexadecimal characters)"
        )
    seen: set[str] = set()
    for status in statuses:
        if status.context in seen:
            # GitHub keeps the last status per context, so a duplicate would hide a gate.
            raise PublishError(f"two statuses share the context {status.context!r}")
        seen.add(status.context)
    if not statuses:
        return
    client = github_client(token, api_url)
    with github_errors(f"reading repository {repository}", api_url):
        repo = client.repository(owner, name)
    for status in statuses:
        with github_errors(f"setting status {status.context} on {sha[:12]}", api_url):
            repo.create_status(
                sha.lower(),
                status.state,
                target_url=status.target_url,
                description=_shorten(status.description, DESCRIPTION_LIMIT),
                context=status.context,
            )


def publish(markdown: str, statuses: Sequence[GateStatus], context: GitHubContext) -> PostedComment:
    """What `llmops report --post` does: the comment (linking the run), then the statuses."""
    if context.pull_number is None or context.sha is None:
        raise PublishError("publishing needs a pull request number and its head commit SHA")
    posted = post_report(
        markdown,
        repository=context.repository,
        pull_number=context.pull_number,
        token=context.token,
        api_url=context.api_url,
        full_report_url=context.run_url,
    )
    set_statuses(
        statuses,
        repository=context.repository,
        sha=context.sha,
        token=context.token,
        api_url=context.api_url,
    )
    return posted


def github_client(token: str, api_url: str) -> github3.GitHub:
    if not token.strip():
        raise PublishError(f"no GitHub token; {_TOKEN_HELP}")
    if (problem := _api_url_problem(api_url)) is not None:
        raise PublishError(f"the GitHub API URL {problem}")
    client = github3.GitHub(token=token.strip())
    # github3 builds every URL from the session's base URL. GITHUB_API_URL already ends in
    # /api/v3 on GitHub Enterprise Server, so it is used as is (GitHubEnterprise would append
    # /api/v3 a second time).
    client.session.base_url = api_url.rstrip("/")
    return client


def _api_url_problem(api_url: str) -> str | None:
    parsed = urlparse(api_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return (
            f"{api_url!r} is not an http(s) URL; use https://api.github.com or, on GitHub "
            "Enterprise Server, https://HOST/api/v3"
        )
    return None


def split_repository(repository: str) -> tuple[str, str]:
    if not _REPOSITORY.fullmatch(repository):
        raise PublishError(f"repository {repository!r} is not 'owner/name'")
    owner, name = repository.split("/")
    return owner, name


def _token_login(client: github3.GitHub) -> str | None:
    try:
        return str(client.me().login)
    except gh.ForbiddenError:
        # Installation tokens (GITHUB_TOKEN in Actions) get "Resource not accessible by
        # integration" from /user; their comments are written by a bot account.
        return None


def _is_ours(comment: Any, login: str | None, marker: str) -> bool:
    if marker not in (comment.body or ""):
        return False
    if login is not None:
        return bool(comment.user.login == login)
    return bool(comment.user.type == "Bot")


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


@contextmanager
def github_errors(
    doing: str, api_url: str, permissions: str = COMMENT_PERMISSIONS
) -> Iterator[None]:
    """github3's and requests' exceptions as one line saying what failed and what to do.

    `permissions` completes "a workflow token needs ..." in the answer to a 403.
    """
    try:
        yield
    except gh.AuthenticationFailed as err:
        raise PublishError(
            f"GitHub refused the token (401 {_message(err)}) while {doing}; "
            "check that GITHUB_TOKEN holds a valid token that has not expired"
        ) from err
    except gh.ForbiddenError as err:
        raise PublishError(_forbidden(err, doing, permissions)) from err
    except gh.NotFoundError as err:
        raise PublishError(
            f"GitHub found nothing (404) while {doing}; check the repository and pull request "
            "number, and that the token can see the repository (GitHub answers 404 to tokens "
            "without access to a private repository)"
        ) from err
    except gh.UnprocessableEntity as err:
        details = "; ".join(_error_detail(e) for e in err.errors)
        raise PublishError(
            f"GitHub rejected the request (422 {_message(err)}{': ' + details if details else ''})"
            f" while {doing}"
        ) from err
    except gh.ResponseError as err:
        raise PublishError(f"GitHub answered {err.code} ({_message(err)}) while {doing}") from err
    except gh.IncompleteResponse as err:
        raise PublishError(
            f"the answer from {api_url} while {doing} lacks {err.exception}, which GitHub's API "
            "always sends; is the API URL right (https://api.github.com, or "
            "https://HOST/api/v3 on GitHub Enterprise Server)?"
        ) from err
    except gh.TransportError as err:
        raise PublishError(
            f"could not reach GitHub at {api_url} while {doing}: {err.exception}"
        ) from err
    except requests.exceptions.JSONDecodeError as err:
        raise PublishError(
            f"the answer from {api_url} while {doing} is not JSON; is the API URL right?"
        ) from err


def _forbidden(err: gh.ForbiddenError, doing: str, permissions: str) -> str:
    headers = err.response.headers
    if headers.get("X-RateLimit-Remaining") == "0":
        reset = headers.get("X-RateLimit-Reset", "")
        when = (
            datetime.fromtimestamp(int(reset), tz=UTC).strftime("%H:%M UTC")
            if reset.isdigit()
            else "the hour"
        )
        return f"GitHub's API rate limit is used up (403) while {doing}; it resets at {when}"
    return (
        f"GitHub forbade {doing} (403 {_message(err)}); a workflow token needs {permissions}, "
        "and pull requests from forks only get a read-only token"
    )


def _message(err: gh.GitHubError) -> str:
    message = err.msg
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message or "no message").split())[:200]


def _error_detail(error: object) -> str:
    if isinstance(error, dict):
        if "message" in error:
            return str(error["message"])
        return " ".join(str(error.get(k)) for k in ("resource", "field", "code") if error.get(k))
    return str(error)
