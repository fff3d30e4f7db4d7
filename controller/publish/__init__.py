"""Publishing: the last stage, putting reports and gate results where reviewers look (GitHub)."""

from controller.publish.github import (
    COMMENT_LIMIT,
    DEFAULT_API_URL,
    DEFAULT_MARKER,
    PLAN_CONTEXT,
    GateStatus,
    GitHubContext,
    PostedComment,
    PublishError,
    context_from_environment,
    fit_comment,
    gate_context,
    post_report,
    publish,
    set_statuses,
)
from controller.publish.pull_requests import (
    IssueOutcome,
    PullRequestOutcome,
    open_or_update_pull_request,
    report_failed_run,
    repository_from_environment,
)

__all__ = [
    "COMMENT_LIMIT",
    "DEFAULT_API_URL",
    "DEFAULT_MARKER",
    "PLAN_CONTEXT",
    "GateStatus",
    "GitHubContext",
    "IssueOutcome",
    "PostedComment",
    "PublishError",
    "PullRequestOutcome",
    "context_from_environment",
    "fit_comment",
    "gate_context",
    "open_or_update_pull_request",
    "post_report",
    "publish",
    "report_failed_run",
    "repository_from_environment",
    "set_statuses",
]
