"""Runner `pull`, URL rules: which model URLs may be fetched; shared with spec validation.

Plain-data checks with no I/O, so the spec API (controller/api/model.py) and the downloader
(runners/pull/http.py) apply the same rule: a spec, a redirect and a resumed download alike.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, urlsplit

DEFAULT_MAX_BYTES = 20 << 30  # 20 GiB: above any GGUF a CPU or one GPU serves here
MAX_REDIRECTS = 5
LOOPBACK_NAMES = ("localhost",)

# Query parameters that carry a signature or a token (S3, GCS, Azure SAS, CloudFront, generic):
# a URL holding one is a credential, and the URL is copied into the lock file and model card.
SIGNATURE_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "token",
        "access_token",
        "auth",
        "key",
        "api_key",
        "apikey",
        "password",
        "secret",
        "key-pair-id",
        "policy",
    }
)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str, *, redirect: bool = False) -> str | None:
    """Why `url` may not be fetched, or None. Plain http is for loopback hosts only (tests and
    a local mirror); a redirect target may carry a signature (CDNs sign their redirects, and
    those never reach a file) but must still be https."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return f"'{url}' is not a valid URL"
    allowed = ("https", "http") if redirect else ("https", "http", "s3")
    if parts.scheme not in allowed:
        return f"scheme '{parts.scheme}' is not allowed; use https"
    if parts.scheme == "http" and not is_loopback(host):
        return (
            f"plain http to {host or 'an unnamed host'} is refused: anyone on the path can "
            "change the file; use https (http is allowed only for 127.0.0.1 and localhost)"
        )
    if not host:
        return f"'{url}' names no host"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL ('user@' or 'user:password@') are refused"
    signed = sorted(
        {
            k
            for k, _ in parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() in SIGNATURE_PARAMS or k.lower().startswith(("x-amz-", "x-goog-"))
        }
    )
    if signed and not redirect:
        return (
            f"the URL carries a signature or token ({', '.join(signed)}): presigned and "
            "tokened URLs are credentials"
        )
    return None
