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

__all__ = [
    "COMMENT_LIMIT",
    "DEFAULT_API_URL",
    "DEFAULT_MARKER",
    "PLAN_CONTEXT",
    "GateStatus",
    "GitHubContext",
    "PostedComment",
    "PublishError",
    "context_from_environment",
    "fit_comment",
    "gate_context",
    "post_report",
    "publish",
    "set_statuses",
]
