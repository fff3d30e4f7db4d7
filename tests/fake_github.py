"""A GitHub REST API stand-in on 127.0.0.1 for publishing tests: state in memory, real HTTP.

It answers the endpoints llmops uses, with payloads shaped like GitHub's documented ones
(https://docs.github.com/en/rest: users, repos, issues, issue comments, commit statuses),
checks the Authorization header like GitHub does (401 "Bad credentials"), paginates with a
Link header, and records every request so tests can see what was sent.
"""

from __future__ import annotations

import html
import json
import re
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

NOW = "2026-01-02T03:04:05Z"
DOCS = "https://docs.github.com/rest"
WEB = "https://github.com"


@dataclass
class Request:
    method: str
    path: str
    body: Any


@dataclass
class FakeGitHub:
    """One repository with pull requests; `token` is the only credential accepted.

    `token_login` is whom the token belongs to; `installation_token=True` makes GET /user
    answer 403 like GitHub does for the Actions GITHUB_TOKEN, whose comments are written by
    the `github-actions[bot]` account. `read_only=True` refuses every write with 403, as
    GitHub does for the read-only token of a pull request from a fork; `rate_limited=True`
    answers every request like GitHub once the hourly limit is spent.
    """

    token: str = "ghp_fake0123456789"
    owner: str = "acme"
    name: str = "llm-specs"
    token_login: str = "llmops-ci"
    installation_token: bool = False
    read_only: bool = False
    rate_limited: bool = False
    pulls: tuple[int, ...] = (7,)
    commits: tuple[str, ...] = ("a" * 40,)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _next_id: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def actor(self) -> tuple[str, str]:
        if self.installation_token:
            return "github-actions[bot]", "Bot"
        return self.token_login, "User"

    def add_comment(self, number: int, body: str, login: str, kind: str = "User") -> int:
        """A comment written by someone else (or by an earlier run), straight into the state."""
        with self._lock:
            return self._store_comment(number, body, login, kind)

    def comments_on(self, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["issue_number"] == number]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def _store_comment(self, number: int, body: str, login: str, kind: str) -> int:
        self._next_id += 1
        self.comments[self._next_id] = {
            "id": self._next_id,
            "issue_number": number,
            "body": body,
            "login": login,
            "type": kind,
            "created_at": NOW,
            "updated_at": NOW,
        }
        return self._next_id

    # Payloads, shaped like the examples in GitHub's REST documentation.

    def user_payload(self, base: str, login: str, kind: str = "User") -> dict[str, Any]:
        api = f"{base}/users/{login}"
        return {
            "login": login,
            "id": zlib.crc32(login.encode()),
            "node_id": "MDQ6VXNlcjE=",
            "avatar_url": f"{WEB}/images/error/{login}_happy.gif",
            "gravatar_id": "",
            "url": api,
            "html_url": f"{WEB}/{login}",
            "followers_url": f"{api}/followers",
            "following_url": f"{api}/following{{/other_user}}",
            "gists_url": f"{api}/gists{{/gist_id}}",
            "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/subscriptions",
            "organizations_url": f"{api}/orgs",
            "repos_url": f"{api}/repos",
            "events_url": f"{api}/events{{/privacy}}",
            "received_events_url": f"{api}/received_events",
            "type": kind,
            "site_admin": False,
        }

    def authenticated_user_payload(self, base: str) -> dict[str, Any]:
        return {
            **self.user_payload(base, self.token_login),
            "name": "llmops CI",
            "company": None,
            "blog": "",
            "location": None,
            "email": None,
            "hireable": None,
            "bio": None,
            "twitter_username": None,
            "public_repos": 2,
            "public_gists": 0,
            "followers": 0,
            "following": 0,
            "created_at": NOW,
            "updated_at": NOW,
            "private_gists": 0,
            "total_private_repos": 1,
            "owned_private_repos": 1,
            "disk_usage": 10000,
            "collaborators": 0,
            "two_factor_authentication": True,
        }

    def repo_payload(self, base: str) -> dict[str, Any]:
        full = f"{self.owner}/{self.name}"
        api = f"{base}/repos/{full}"
        templated = {
            "archive_url": "/{archive_format}{/ref}",
            "assignees_url": "/assignees{/user}",
            "blobs_url": "/git/blobs{/sha}",
            "branches_url": "/branches{/branch}",
            "collaborators_url": "/collaborators{/collaborator}",
            "comments_url": "/comments{/number}",
            "commits_url": "/commits{/sha}",
            "compare_url": "/compare/{base}...{head}",
            "contents_url": "/contents/{+path}",
            "contributors_url": "/contributors",
            "deployments_url": "/deployments",
            "downloads_url": "/downloads",
            "events_url": "/events",
            "forks_url": "/forks",
            "git_commits_url": "/git/commits{/sha}",
            "git_refs_url": "/git/refs{/sha}",
            "git_tags_url": "/git/tags{/sha}",
            "hooks_url": "/hooks",
            "issue_comment_url": "/issues/comments{/number}",
            "issue_events_url": "/issues/events{/number}",
            "issues_url": "/issues{/number}",
            "keys_url": "/keys{/key_id}",
            "labels_url": "/labels{/name}",
            "languages_url": "/languages",
            "merges_url": "/merges",
            "milestones_url": "/milestones{/number}",
            "notifications_url": "/notifications{?since,all,participating}",
            "pulls_url": "/pulls{/number}",
            "releases_url": "/releases{/id}",
            "stargazers_url": "/stargazers",
            "statuses_url": "/statuses/{sha}",
            "subscribers_url": "/subscribers",
            "subscription_url": "/subscription",
            "tags_url": "/tags",
            "teams_url": "/teams",
            "trees_url": "/git/trees{/sha}",
        }
        return {
            "id": 1296269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": self.name,
            "full_name": full,
            "owner": self.user_payload(base, self.owner, "Organization"),
            "private": False,
            "html_url": f"{WEB}/{full}",
            "description": "LLM specs, the GitOps way",
            "fork": False,
            "url": api,
            **{key: api + suffix for key, suffix in templated.items()},
            "clone_url": f"{WEB}/{full}.git",
            "git_url": f"git:github.com/{full}.git",
            "mirror_url": None,
            "ssh_url": f"git@github.com:{full}.git",
            "svn_url": f"{WEB}/{full}",
            "homepage": None,
            "language": "Python",
            "forks_count": 0,
            "stargazers_count": 1,
            "watchers_count": 1,
            "size": 108,
            "default_branch": "main",
            "open_issues_count": len(self.pulls),
            "is_template": False,
            "topics": [],
            "has_issues": True,
            "has_projects": True,
            "has_wiki": False,
            "has_pages": False,
            "has_downloads": True,
            "archived": False,
            "disabled": False,
            "visibility": "public",
            "pushed_at": NOW,
            "created_at": NOW,
            "updated_at": NOW,
            "permissions": {"admin": False, "push": True, "pull": True},
            "allow_rebase_merge": True,
            "allow_squash_merge": True,
            "allow_merge_commit": True,
            "subscribers_count": 1,
            "network_count": 0,
            "license": None,
        }

    def issue_payload(self, base: str, number: int) -> dict[str, Any]:
        full = f"{self.owner}/{self.name}"
        api = f"{base}/repos/{full}/issues/{number}"
        return {
            "id": 1,
            "node_id": "MDU6SXNzdWUx",
            "url": api,
            "repository_url": f"{base}/repos/{full}",
            "labels_url": f"{api}/labels{{/name}}",
            "comments_url": f"{api}/comments",
            "events_url": f"{api}/events",
            "html_url": f"{WEB}/{full}/pull/{number}",
            "number": number,
            "state": "open",
            "title": "Raise the LoRA rank",
            "body": "Try r=16.",
            "body_html": "<p>Try r=16.</p>",
            "body_text": "Try r=16.",
            "user": self.user_payload(base, "alice"),
            "labels": [],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": len(self.comments_on(number)),
            "pull_request": {
                "url": f"{base}/repos/{full}/pulls/{number}",
                "html_url": f"{WEB}/{full}/pull/{number}",
                "diff_url": f"{WEB}/{full}/pull/{number}.diff",
                "patch_url": f"{WEB}/{full}/pull/{number}.patch",
            },
            "closed_at": None,
            "closed_by": None,
            "created_at": NOW,
            "updated_at": NOW,
            "author_association": "CONTRIBUTOR",
        }

    def comment_payload(self, base: str, comment: dict[str, Any]) -> dict[str, Any]:
        full = f"{self.owner}/{self.name}"
        number = comment["issue_number"]
        return {
            "id": comment["id"],
            "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
            "url": f"{base}/repos/{full}/issues/comments/{comment['id']}",
            "html_url": f"{WEB}/{full}/pull/{number}#issuecomment-{comment['id']}",
            "issue_url": f"{base}/repos/{full}/issues/{number}",
            "body": comment["body"],
            "body_html": f"<p>{html.escape(comment['body'])}</p>",
            "body_text": comment["body"],
            "user": self.user_payload(base, comment["login"], comment["type"]),
            "created_at": comment["created_at"],
            "updated_at": comment["updated_at"],
            "author_association": "MEMBER" if comment["type"] == "User" else "NONE",
        }

    def status_payload(self, base: str, sha: str, data: dict[str, Any], ident: int) -> dict:
        login, kind = self.actor
        return {
            "url": f"{base}/repos/{self.owner}/{self.name}/statuses/{sha}",
            "avatar_url": f"{WEB}/images/error/hubot_happy.gif",
            "id": ident,
            "node_id": "MDY6U3RhdHVzMQ==",
            "state": data["state"],
            "description": data.get("description"),
            "target_url": data.get("target_url"),
            "context": data.get("context", "default"),
            "created_at": NOW,
            "updated_at": NOW,
            "creator": self.user_payload(base, login, kind),
        }

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._send(400, {"message": "Problems parsing JSON", "documentation_url": DOCS})
                    return
                with fake._lock:
                    fake.requests.append(Request(method, url.path, body))
                    if self.headers.get("Authorization") not in (
                        f"token {fake.token}",
                        f"Bearer {fake.token}",
                    ):
                        status, payload, headers = (
                            401,
                            {"message": "Bad credentials", "documentation_url": DOCS},
                            {},
                        )
                    else:
                        base = f"http://{self.headers['Host']}"
                        status, payload, headers = fake._route(
                            base, method, url.path, parse_qs(url.query), body
                        )
                self._send(status, payload, headers)

            def _send(
                self, status: int, payload: Any, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _route(
        self, base: str, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        not_found = (404, {"message": "Not Found", "documentation_url": DOCS}, {})
        if self.rate_limited:
            message = "API rate limit exceeded for installation ID 1."
            headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1767326400"}
            return 403, {"message": message, "documentation_url": DOCS}, headers
        if path == "/user" and method == "GET":
            if self.installation_token:
                message = "Resource not accessible by integration"
                return 403, {"message": message, "documentation_url": DOCS}, {}
            return 200, self.authenticated_user_payload(base), {}
        if self.read_only and method != "GET":
            message = "Resource not accessible by integration"
            return 403, {"message": message, "documentation_url": DOCS}, {}
        repo = f"/repos/{self.owner}/{self.name}"
        if not path.startswith(repo):
            return not_found
        rest = path[len(repo) :]
        if rest == "" and method == "GET":
            return 200, self.repo_payload(base), {}
        if match := re.fullmatch(r"/issues/(\d+)", rest):
            number = int(match[1])
            if number not in self.pulls or method != "GET":
                return not_found
            return 200, self.issue_payload(base, number), {}
        if match := re.fullmatch(r"/issues/(\d+)/comments", rest):
            number = int(match[1])
            if number not in self.pulls:
                return not_found
            if method == "GET":
                return self._list_comments(base, path, number, query)
            if method == "POST":
                if invalid := self._invalid_body(body):
                    return invalid
                login, kind = self.actor
                ident = self._store_comment(number, body["body"], login, kind)
                return 201, self.comment_payload(base, self.comments[ident]), {}
        if (match := re.fullmatch(r"/issues/comments/(\d+)", rest)) and method == "PATCH":
            comment = self.comments.get(int(match[1]))
            if comment is None:
                return not_found
            if (comment["login"], comment["type"]) != self.actor:
                # The fake token has no admin rights, so like GitHub it may only edit its own.
                message = "Resource not accessible by personal access token"
                return 403, {"message": message, "documentation_url": DOCS}, {}
            if invalid := self._invalid_body(body):
                return invalid
            comment["body"] = body["body"]
            comment["updated_at"] = "2026-01-02T04:00:00Z"
            return 200, self.comment_payload(base, comment), {}
        if (match := re.fullmatch(r"/statuses/([0-9a-fA-F]+)", rest)) and method == "POST":
            return self._create_status(base, match[1], body)
        return not_found

    def _list_comments(
        self, base: str, path: str, number: int, query: dict[str, list[str]]
    ) -> tuple[int, Any, dict[str, str]]:
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        items = sorted(self.comments_on(number), key=lambda c: c["id"])
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(items):
            last = (len(items) + per_page - 1) // per_page
            link = f"{base}{path}?per_page={per_page}&page="
            headers["Link"] = f'<{link}{page + 1}>; rel="next", <{link}{last}>; rel="last"'
        return 200, [self.comment_payload(base, c) for c in chunk], headers

    def _invalid_body(self, body: Any) -> tuple[int, Any, dict[str, str]] | None:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            error = {"resource": "IssueComment", "code": "missing_field", "field": "body"}
            return 422, {"message": "Validation Failed", "errors": [error]}, {}
        if len(body["body"]) > 65536:
            error = {
                "resource": "IssueComment",
                "code": "custom",
                "field": "body",
                "message": "body is too long (maximum is 65536 characters)",
            }
            return 422, {"message": "Validation Failed", "errors": [error]}, {}
        return None

    def _create_status(self, base: str, sha: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        if sha not in self.commits:
            return (
                422,
                {"message": f"No commit found for SHA: {sha}", "documentation_url": DOCS},
                {},
            )
        data = body if isinstance(body, dict) else {}
        if data.get("state") not in ("error", "failure", "pending", "success"):
            error = {"resource": "Status", "code": "custom", "field": "state"}
            return 422, {"message": "Validation Failed", "errors": [error]}, {}
        if len(data.get("description") or "") > 140:
            error = {
                "resource": "Status",
                "code": "custom",
                "field": "description",
                "message": "description is too long (maximum is 140 characters)",
            }
            return 422, {"message": "Validation Failed", "errors": [error]}, {}
        existing = self.statuses.setdefault(sha, [])
        payload = self.status_payload(base, sha, data, len(existing) + 1)
        existing.append(payload)
        return 201, payload, {}
