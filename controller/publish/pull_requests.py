"""Publishing, pull requests: the production loop's promotion and revert pull requests, and an
issue with a failing commit status when a pipeline run fails.

One open pull request per head branch (one branch per pipeline and data fingerprint, or per
revert): a rerun finds it by `owner:head` and replaces its title and body instead of opening
another; reviewers and labels are set once, when it is opened, so a rerun does not ping
reviewers again or undo what people changed. A failed run opens an issue (found again by its
exact title and a hidden marker, so reruns update it) and sets a failing commit status that
links to it. Everything goes through github3.py with the client and error translation of
`controller.publish.github`: the API URL is set on github3's session (GitHub Enterprise, the
tests' stand-in on 127.0.0.1) and GitHub's refusals become one line saying what to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from github3 import exceptions as gh

from controller.publish.github import (
    DEFAULT_MARKER,
    SHA_PATTERN,
    GateStatus,
    GitHubContext,
    PublishError,
    context_from_environment,
    fit_comment,
    github_client,
    github_errors,
    set_statuses,
    split_repository,
)

PIPELINE_CONTEXT = "llmops/pipeline"
# Complete "a workflow token needs ..." when GitHub answers 403.
PULL_PERMISSIONS = (
    "`permissions: pull-requests: write` (and the repository setting 'Allow GitHub Actions to "
    "create and approve pull requests' for the Actions token)"
)
ISSUE_PERMISSIONS = "`permissions: issues: write` for the issue and `statuses: write` for statuses"


@dataclass(frozen=True)
class PullRequestOutcome:
    number: int
    url: str
    created: bool


@dataclass(frozen=True)
class IssueOutcome:
    """The failed-run issue; `status_context` is the failing commit status set, if any."""

    number: int
    url: str
    created: bool
    status_context: str | None = None


def pipeline_marker(pipeline: str | None) -> str:
    """The hidden line by which a later run finds its failed-run issue."""
    return f"<!-- llmops-pipeline:{pipeline} -->" if pipeline else "<!-- llmops-pipeline -->"


def pipeline_context(pipeline: str | None) -> str:
    return f"{PIPELINE_CONTEXT}/{pipeline}" if pipeline else PIPELINE_CONTEXT


def repository_from_environment(env: Mapping[str, str] | None = None) -> GitHubContext:
    """Where to publish from a run that is not a pull-request event (a scheduled pipeline).

    GITHUB_TOKEN, GITHUB_REPOSITORY ("owner/name") and GITHUB_API_URL (default
    https://api.github.com); GITHUB_SHA and the run's URL when set. No pull request needed.
    """
    return context_from_environment(env, need_pull=False, need_sha=False)


def open_or_update_pull_request(
    context: GitHubContext,
    head: str,
    base: str,
    title: str,
    body: str,
    reviewers: Sequence[str] = (),
    labels: Sequence[str] = (),
) -> PullRequestOutcome:
    """Open the pull request of branch `head` into `base`, or update the open one.

    `head` is a branch of the repository itself (pushed before). A reviewer is a user login,
    or a team as `org/team-slug` (a team of the repository's owner); a plain name GitHub
    refuses as a user is asked as a team slug. The body (the llmops report) starts with the
    report marker and is cut at a line when over GitHub's limit.
    """
    owner, name = split_repository(context.repository)
    for what, branch in (("head", head), ("base", base)):
        if not branch.strip() or ":" in branch or branch != branch.strip():
            raise PublishError(f"the {what} branch {branch!r} is not a branch name")
    if not title.strip():
        raise PublishError(f"the pull request from {head} needs a title")
    users, teams = _reviewers(reviewers, owner)
    names = _labels(labels)
    text = fit_comment(
        body,
        marker=DEFAULT_MARKER,
        full_report_url=context.run_url,
        holder="pull request bodies",
    )
    api = context.api_url
    client = github_client(context.token, api)
    with github_errors(
        f"looking for an open pull request from {head} into {base} on {context.repository}",
        api,
        PULL_PERMISSIONS,
    ):
        repo = client.repository(owner, name)
        pull = _open_pull(repo, owner, head, base)
    if pull is None:
        pull = _create_pull(repo, context, head, base, title, text)
        if pull is not None:
            where = f"{context.repository}#{pull.number}"
            if names:
                with github_errors(f"adding labels to {where}", api, PULL_PERMISSIONS):
                    pull.issue().add_labels(*names)
            _request_reviews(pull, users, teams, owner, where, api)
            return PullRequestOutcome(number=pull.number, url=pull.html_url, created=True)
        # Opened meanwhile by a concurrent run: update that one.
        with github_errors(f"reading the pull request from {head}", api, PULL_PERMISSIONS):
            pull = _open_pull(repo, owner, head, base)
        if pull is None:
            raise PublishError(
                f"GitHub says a pull request from {head} into {base} exists on "
                f"{context.repository}, but none is open; try again"
            )
    if pull.title != title or (pull.body or "") != text:
        where = f"{context.repository}#{pull.number}"
        with github_errors(f"updating pull request {where}", api, PULL_PERMISSIONS):
            pull.update(title=title, body=text)
    return PullRequestOutcome(number=pull.number, url=pull.html_url, created=False)


def report_failed_run(
    context: GitHubContext,
    sha: str | None,
    title: str,
    body: str,
    labels: Sequence[str] = (),
    *,
    pipeline: str | None = None,
) -> IssueOutcome:
    """Open an issue saying what failed, or update the open one a previous run opened, then
    set a failing commit status `llmops/pipeline/<pipeline>` on `sha` linking to it.

    The previous run's issue is the open issue (not pull request) with exactly this title whose
    body holds `<!-- llmops-pipeline:<pipeline> -->`. Labels are set when it is opened.
    """
    owner, name = split_repository(context.repository)
    if not title.strip():
        raise PublishError("the failed-run issue needs a title")
    if sha is not None and not SHA_PATTERN.fullmatch(sha.lower()):
        raise PublishError(f"commit {sha!r} is not a full SHA (40 hexadecimal characters)")
    marker = pipeline_marker(pipeline)
    text = fit_comment(body, marker=marker, full_report_url=context.run_url, holder="issue bodies")
    names = _labels(labels)
    api = context.api_url
    client = github_client(context.token, api)
    with github_errors(
        f"looking for the open issue {title!r} on {context.repository}", api, ISSUE_PERMISSIONS
    ):
        repo = client.repository(owner, name)
        ours = next(
            (
                issue
                for issue in repo.issues(state="open")
                if issue.pull_request_urls is None
                and issue.title == title
                and marker in (issue.body or "")
            ),
            None,
        )
    if ours is None:
        with github_errors(
            f"opening the issue {title!r} on {context.repository}", api, ISSUE_PERMISSIONS
        ):
            issue = repo.create_issue(title, body=text, labels=names or None)
        number, url, created = issue.number, issue.html_url, True
    else:
        if ours.body != text:
            where = f"{context.repository}#{ours.number}"
            with github_errors(f"updating issue {where}", api, ISSUE_PERMISSIONS):
                ours.edit(body=text)
        number, url, created = ours.number, ours.html_url, False
    status = None
    if sha is not None:
        status = pipeline_context(pipeline)
        set_statuses(
            [GateStatus(status, "failure", title, url)],
            repository=context.repository,
            sha=sha,
            token=context.token,
            api_url=api,
        )
    return IssueOutcome(number=number, url=url, created=created, status_context=status)


def _open_pull(repo: Any, owner: str, head: str, base: str) -> Any | None:
    return next(iter(repo.pull_requests(state="open", head=f"{owner}:{head}", base=base)), None)


def _create_pull(
    repo: Any, context: GitHubContext, head: str, base: str, title: str, text: str
) -> Any | None:
    """The new pull request, or None when GitHub says an open one already exists."""
    doing = f"opening a pull request from {head} into {base} on {context.repository}"
    try:
        with github_errors(doing, context.api_url, PULL_PERMISSIONS):
            return repo.create_pull(title, base, head, body=text)
    except PublishError as err:
        refusal = err.__cause__
        if not isinstance(refusal, gh.UnprocessableEntity):
            raise
        if any("already exists" in _detail(e) for e in refusal.errors):
            return None
        if _invalid_field(refusal, "head"):
            raise PublishError(
                f"{err}: GitHub has no branch {head!r}; push it to {context.repository} "
                "before opening its pull request"
            ) from refusal
        if _invalid_field(refusal, "base"):
            raise PublishError(f"{err}: GitHub has no base branch {base!r}") from refusal
        if any("No commits between" in _detail(e) for e in refusal.errors):
            raise PublishError(
                f"{err}: {head} holds nothing that {base} lacks, so there is nothing to propose"
            ) from refusal
        raise


def _request_reviews(
    pull: Any, users: list[str], teams: list[str], owner: str, where: str, api: str
) -> None:
    """Ask everyone at once; GitHub refuses the whole request for one name it cannot ask, so
    then ask one at a time, a plain name refused as a user once more as a team slug."""
    if (not users and not teams) or _ask(pull, api, where, users, teams) is None:
        return
    attempts = [(login, [([login], []), ([], [login])]) for login in users]
    attempts += [(f"{owner}/{slug}", [([], [slug])]) for slug in teams]
    refused: list[tuple[str, gh.UnprocessableEntity]] = []
    for reviewer, tries in attempts:
        for as_users, as_teams in tries:
            refusal = _ask(pull, api, where, as_users, as_teams)
            if refusal is None:
                break
        else:
            refused.append((reviewer, refusal))
    if not refused:
        return
    names = ", ".join(repr(reviewer) for reviewer, _ in refused)
    try:
        # The first refusal, worded like every other GitHub refusal.
        with github_errors(f"requesting a review from {names} on {where}", api):
            raise refused[0][1]
    except PublishError as err:
        raise PublishError(
            f"{err}; the pull request is open at {pull.html_url}; a reviewer must be a "
            f"collaborator, or a team of {owner} with access to the repository "
            "(a plain name is tried as a user, then as a team slug)"
        ) from refused[0][1]


def _ask(
    pull: Any, api: str, where: str, users: list[str], teams: list[str]
) -> gh.UnprocessableEntity | None:
    """Request reviews; GitHub's 422 refusal is returned, any other error raised as one line."""
    with github_errors(f"requesting reviews on {where}", api, PULL_PERMISSIONS):
        try:
            pull.create_review_requests(reviewers=users or None, team_reviewers=teams or None)
        except gh.UnprocessableEntity as err:
            return err
    return None


def _reviewers(reviewers: Sequence[str], owner: str) -> tuple[list[str], list[str]]:
    """User logins and team slugs; `org/team` must name a team of the repository's owner."""
    users: list[str] = []
    teams: list[str] = []
    for reviewer in dict.fromkeys(r.strip() for r in reviewers):
        org, slash, slug = reviewer.partition("/")
        if not reviewer or (slash and (not org or not slug or "/" in slug)):
            raise PublishError(f"reviewer {reviewer!r} is neither a login nor 'org/team-slug'")
        if not slash:
            users.append(reviewer)
        elif org.casefold() != owner.casefold():
            raise PublishError(
                f"reviewer {reviewer!r} is a team of {org}, but pull requests on {owner}'s "
                f"repositories can only ask teams of {owner}"
            )
        else:
            teams.append(slug)
    return users, teams


def _labels(labels: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(label.strip() for label in labels))
    if "" in names:
        raise PublishError("a label is empty")
    return names


def _invalid_field(refusal: gh.UnprocessableEntity, name: str) -> bool:
    return any(
        isinstance(e, dict) and e.get("field") == name and e.get("code") == "invalid"
        for e in refusal.errors
    )


def _detail(error: object) -> str:
    return str(error.get("message", "")) if isinstance(error, dict) else str(error)
