"""Loading, safety check: token-shaped secrets written inline in specs are rejected."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretPattern:
    label: str
    regex: re.Pattern[str]


# Provider token formats are documented by each provider; the prefixes make false positives rare.
SECRET_PATTERNS: tuple[SecretPattern, ...] = tuple(
    SecretPattern(label, re.compile(rx))
    for label, rx in (
        ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}\b"),
        ("OpenAI API key", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}\b"),
        ("Anthropic API key", r"\bsk-ant-[A-Za-z0-9_-]{20,}\b"),
        ("GitHub token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
        ("AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        ("Slack token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"),
        ("Google API key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
        ("private key", r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
        ("JSON web token", r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
        ("password in a URL", r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]+@"),
    )
)

SECRET_FIELD_NAMES = re.compile(
    r"(^|_)(password|passwd|secret|token|api_key|apikey|access_key|private_key)$", re.IGNORECASE
)


def find_secret(value: str, field: str | int | None = None) -> str | None:
    """The kind of secret `value` looks like, or None.

    A literal string under a secret-looking field name (api_key: "abc123") counts too: those
    fields take a reference ({env: NAME} or {secret: name/key}), never the value.
    """
    for pattern in SECRET_PATTERNS:
        if pattern.regex.search(value):
            return pattern.label
    if isinstance(field, str) and SECRET_FIELD_NAMES.search(field) and len(value) >= 8:
        return f"value of '{field}'"
    return None


SECRET_HINT = (
    "never write secrets in specs (they end up in git history); store it in an environment "
    "variable or a Kubernetes secret and reference it, e.g. "
    "api_key: {env: LLMOPS_KEY_SUPPORT_ASSISTANT} "
    "or api_key: {secret: llm-keys/support}; then rotate the exposed one"
)
