"""A GitHub REST API stand-in on 127.0.0.1 for publishing tests: state in memory, real HTTP.

It answers the endpoints llmops uses, with payloads shaped like GitHub's documented ones
(https://docs.github.com/en/rest: users, repos, issues, issue comments, labels, pull
requests, review requests, commit statuses), checks the Authorization header like GitHub
does (401 "Bad credentials"), paginates with a Link header, and records every request so
tests can see what was sent. Issues and pull requests share one numbering, as on GitHub:
every pull request is also an issue (`/issues` lists it, with a `pull_request` key).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlparse

NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"
DOCS = "https://docs.github.com/rest"
WEB = "https://github.com"
BODY_LIMIT = 65536
# GitHub's colour for a label created by adding it to an issue.
NEW_LABEL_COLOR = "ededed"

Reply = tuple[int, Any, dict[str, str]]


def fake_sha(name: str) -> str:
    """A stable 40-character commit SHA for a branch name in tests."""
    return hashlib.sha1(name.encode()).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    body: Any
    query: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class FakeGitHub:
    """One repository with issues and pull requests; `token` is the only credential accepted.

    `token_login` is whom the token belongs to; `installation_token=True` makes GET /user
    answer 403 like GitHub does for the Actions GITHUB_TOKEN, whose comments are written by
    the `github-actions[bot]` account. `read_only=True` refuses every write with 403, as
    GitHub does for the read-only token of a pull request from a fork; `rate_limited=True`
    answers every request like GitHub once the hourly limit is spent;
    `actions_can_open_pulls=False` is the repository setting that keeps the Actions token
    from opening pull requests.

    `pulls` are the numbers of pull requests alice has open from the start. `branches` are
    the branches GitHub knows (name -> head commit; any mapping answering `in`, `[]`, `get`
    and `values`); a pull request's head and base must be among them, and a status may be
    set on their heads and on `commits`. `collaborators` and `teams` (slug -> name, teams of
    `owner`) are who may be asked for a review; `labels` (name -> colour) the repository's
    labels, to which adding an unknown one to an issue adds it, as GitHub does.
    """

    token: str = "ghp_fake0123456789"
    owner: str = "acme"
    name: str = "llm-specs"
    token_login: str = "llmops-ci"
    installation_token: bool = False
    read_only: bool = False
    rate_limited: bool = False
    actions_can_open_pulls: bool = True
    pulls: tuple[int, ...] = (7,)
    commits: tuple[str, ...] = ("a" * 40,)
    branches: dict[str, str] = field(default_factory=lambda: {"main": fake_sha("main")})
    collaborators: set[str] = field(default_factory=lambda: {"alice", "bob", "carol"})
    teams: dict[str, str] = field(default_factory=lambda: {"ml-reviewers": "ML reviewers"})
    labels: dict[str, str] = field(default_factory=lambda: {"bug": "d73a4a"})
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _next_id: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for number in self.pulls:
            head = f"alice/change-{number}"
            self.branches.setdefault(head, self.commits[0] if self.commits else fake_sha(head))
            self.issues[number] = self._new_issue(
                number, "Raise the LoRA rank", "Try r=16.", "alice", "User", []
            )
            self.issues[number]["pull"] = self._new_pull(head, "main")

    @property
    def actor(self) -> tuple[str, str]:
        if self.installation_token:
            return "github-actions[bot]", "Bot"
        return self.token_login, "User"

    def add_comment(self, number: int, body: str, login: str, kind: str = "User") -> int:
        """A comment written by someone else (or by an earlier run), straight into the state."""
        with self._lock:
            return self._store_comment(number, body, login, kind)

    def add_issue(
        self,
        title: str,
        body: str | None,
        login: str = "alice",
        *,
        labels: Sequence[str] = (),
        state: str = "open",
        kind: str = "User",
    ) -> int:
        """An issue opened by someone else (or by an earlier run), straight into the state."""
        with self._lock:
            number = self._next_number()
            self.issues[number] = self._new_issue(number, title, body, login, kind, labels)
            self.issues[number]["state"] = state
            return number

    def add_pull(
        self,
        head: str,
        base: str = "main",
        *,
        title: str = "A change",
        body: str | None = None,
        login: str = "alice",
        state: str = "open",
    ) -> int:
        """A pull request opened by someone else; its head branch is added to `branches`."""
        with self._lock:
            self.branches.setdefault(head, fake_sha(head))
            number = self._next_number()
            self.issues[number] = self._new_issue(number, title, body, login, "User", [])
            self.issues[number]["state"] = state
            self.issues[number]["pull"] = self._new_pull(head, base)
            return number

    def comments_on(self, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["issue_number"] == number]

    @property
    def pull_requests(self) -> dict[int, dict[str, Any]]:
        """Every pull request by number, flat (a copy: title, body, state, labels, head, base,
        requested_reviewers, requested_teams, html_url, ...); `issues` holds the state."""
        return {
            number: {
                **{k: v for k, v in issue.items() if k != "pull"},
                **issue["pull"],
                "html_url": f"{WEB}/{self.owner}/{self.name}/pull/{number}",
            }
            for number, issue in self.issues.items()
            if issue["pull"] is not None
        }

    def open_pulls(self) -> list[dict[str, Any]]:
        return [p for p in self.pull_requests.values() if p["state"] == "open"]

    def plain_issues(self, state: str = "all") -> list[dict[str, Any]]:
        return [
            i for i in self.issues.values() if i["pull"] is None and state in ("all", i["state"])
        ]

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def _next_number(self) -> int:
        return max(self.issues, default=0) + 1

    def _new_issue(
        self,
        number: int,
        title: str,
        body: str | None,
        login: str,
        kind: str,
        labels: Sequence[str],
    ) -> dict[str, Any]:
        for label in labels:
            self.labels.setdefault(label, NEW_LABEL_COLOR)
        return {
            "number": number,
            "id": 500000 + number,
            "title": title,
            "body": body,
            "state": "open",
            "login": login,
            "type": kind,
            "labels": list(dict.fromkeys(labels)),
            "created_at": NOW,
            "updated_at": NOW,
            "closed_at": None,
            "pull": None,
        }

    def _new_pull(self, head: str, base: str) -> dict[str, Any]:
        return {
            "head": head,
            "base": base,
            "head_sha": self.branches.get(head, fake_sha(head)),
            "base_sha": self.branches.get(base, fake_sha(base)),
            "requested_reviewers": [],
            "requested_teams": [],
            "draft": False,
            "maintainer_can_modify": False,
        }

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
            "open_issues_count": sum(1 for i in self.issues.values() if i["state"] == "open"),
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

    def label_payload(self, base: str, name: str) -> dict[str, Any]:
        return {
            "id": zlib.crc32(name.encode()),
            "node_id": "MDU6TGFiZWwyMDgwNDU5NDY=",
            "url": f"{base}/repos/{self.owner}/{self.name}/labels/{quote(name, safe='')}",
            "name": name,
            "description": None,
            "color": self.labels.get(name, NEW_LABEL_COLOR),
            "default": name == "bug",
        }

    def team_payload(self, base: str, slug: str) -> dict[str, Any]:
        ident = zlib.crc32(slug.encode())
        api = f"{base}/organizations/1/team/{ident}"
        return {
            "id": ident,
            "node_id": "MDQ6VGVhbTE=",
            "url": api,
            "html_url": f"{WEB}/orgs/{self.owner}/teams/{slug}",
            "name": self.teams.get(slug, slug),
            "slug": slug,
            "description": None,
            "privacy": "closed",
            "notification_setting": "notifications_enabled",
            "permission": "pull",
            "members_url": f"{api}/members{{/member}}",
            "repositories_url": f"{api}/repos",
            "parent": None,
        }

    def issue_payload(self, base: str, number: int) -> dict[str, Any]:
        full = f"{self.owner}/{self.name}"
        api = f"{base}/repos/{full}/issues/{number}"
        issue = self.issues[number]
        body = issue["body"]
        payload: dict[str, Any] = {
            "id": issue["id"],
            "node_id": "MDU6SXNzdWUx",
            "url": api,
            "repository_url": f"{base}/repos/{full}",
            "labels_url": f"{api}/labels{{/name}}",
            "comments_url": f"{api}/comments",
            "events_url": f"{api}/events",
            "html_url": f"{WEB}/{full}/{'issues' if issue['pull'] is None else 'pull'}/{number}",
            "number": number,
            "state": issue["state"],
            "state_reason": None,
            "title": issue["title"],
            "body": body,
            "body_html": None if body is None else f"<p>{html.escape(body)}</p>",
            "body_text": body,
            "user": self.user_payload(base, issue["login"], issue["type"]),
            "labels": [self.label_payload(base, name) for name in issue["labels"]],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "active_lock_reason": None,
            "comments": len(self.comments_on(number)),
            "closed_at": issue["closed_at"],
            "closed_by": None,
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "author_association": _association(issue["type"]),
        }
        if issue["pull"] is not None:
            payload["pull_request"] = {
                "url": f"{base}/repos/{full}/pulls/{number}",
                "html_url": f"{WEB}/{full}/pull/{number}",
                "diff_url": f"{WEB}/{full}/pull/{number}.diff",
                "patch_url": f"{WEB}/{full}/pull/{number}.patch",
                "merged_at": None,
            }
        return payload

    def pull_payload(self, base: str, number: int, *, full: bool = True) -> dict[str, Any]:
        """The pull request as GET /pulls/{n} answers (`full`), or as the list shows it."""
        repo = f"{self.owner}/{self.name}"
        api = f"{base}/repos/{repo}/pulls/{number}"
        issue_api = f"{base}/repos/{repo}/issues/{number}"
        web = f"{WEB}/{repo}/pull/{number}"
        issue = self.issues[number]
        pull = issue["pull"]
        body = issue["body"]
        statuses = f"{base}/repos/{repo}/statuses/{pull['head_sha']}"

        def end(ref: str, sha: str) -> dict[str, Any]:
            return {
                "label": f"{self.owner}:{ref}",
                "ref": ref,
                "sha": sha,
                "user": self.user_payload(base, self.owner, "Organization"),
                "repo": self.repo_payload(base),
            }

        payload: dict[str, Any] = {
            "url": api,
            "id": issue["id"],
            "node_id": "MDExOlB1bGxSZXF1ZXN0MQ==",
            "html_url": web,
            "diff_url": f"{web}.diff",
            "patch_url": f"{web}.patch",
            "issue_url": issue_api,
            "commits_url": f"{api}/commits",
            "review_comments_url": f"{api}/comments",
            "review_comment_url": f"{base}/repos/{repo}/pulls/comments{{/number}}",
            "comments_url": f"{issue_api}/comments",
            "statuses_url": statuses,
            "number": number,
            "state": issue["state"],
            "locked": False,
            "title": issue["title"],
            "user": self.user_payload(base, issue["login"], issue["type"]),
            "body": body,
            "body_html": None if body is None else f"<p>{html.escape(body)}</p>",
            "body_text": body,
            "labels": [self.label_payload(base, name) for name in issue["labels"]],
            "milestone": None,
            "active_lock_reason": None,
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": issue["closed_at"],
            "merged_at": None,
            "merge_commit_sha": None,
            "assignee": None,
            "assignees": [],
            "requested_reviewers": [
                self.user_payload(base, login) for login in pull["requested_reviewers"]
            ],
            "requested_teams": [self.team_payload(base, slug) for slug in pull["requested_teams"]],
            "head": end(pull["head"], pull["head_sha"]),
            "base": end(pull["base"], pull["base_sha"]),
            "_links": {
                "self": {"href": api},
                "html": {"href": web},
                "issue": {"href": issue_api},
                "comments": {"href": f"{issue_api}/comments"},
                "review_comments": {"href": f"{api}/comments"},
                "review_comment": {"href": f"{base}/repos/{repo}/pulls/comments{{/number}}"},
                "commits": {"href": f"{api}/commits"},
                "statuses": {"href": statuses},
            },
            "author_association": _association(issue["type"]),
            "auto_merge": None,
            "draft": pull["draft"],
        }
        if full:
            payload.update(
                merged=False,
                mergeable=True,
                rebaseable=True,
                mergeable_state="clean",
                merged_by=None,
                comments=len(self.comments_on(number)),
                review_comments=0,
                maintainer_can_modify=pull["maintainer_can_modify"],
                commits=1,
                additions=1,
                deletions=1,
                changed_files=1,
            )
        return payload

    def comment_payload(self, base: str, comment: dict[str, Any]) -> dict[str, Any]:
        full = f"{self.owner}/{self.name}"
        number = comment["issue_number"]
        issue = self.issues.get(number)
        where = "issues" if issue is not None and issue["pull"] is None else "pull"
        return {
            "id": comment["id"],
            "node_id": "MDEyOklzc3VlQ29tbWVudDE=",
            "url": f"{base}/repos/{full}/issues/comments/{comment['id']}",
            "html_url": f"{WEB}/{full}/{where}/{number}#issuecomment-{comment['id']}",
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
                query = parse_qs(url.query)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    self._send(400, {"message": "Problems parsing JSON", "documentation_url": DOCS})
                    return
                with fake._lock:
                    fake.requests.append(Request(method, url.path, body, query))
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
                        status, payload, headers = fake._route(base, method, url.path, query, body)
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
    ) -> Reply:
        not_found = _error(404, "Not Found")
        if self.rate_limited:
            headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1767326400"}
            return _error(403, "API rate limit exceeded for installation ID 1.", headers)
        if path == "/user" and method == "GET":
            if self.installation_token:
                return _error(403, "Resource not accessible by integration")
            return 200, self.authenticated_user_payload(base), {}
        if self.read_only and method != "GET":
            return _error(403, "Resource not accessible by integration")
        repo = f"/repos/{self.owner}/{self.name}"
        if not path.startswith(repo):
            return not_found
        rest = path[len(repo) :]
        if rest == "" and method == "GET":
            return 200, self.repo_payload(base), {}
        if rest == "/issues" and method in ("GET", "POST"):
            if method == "GET":
                return self._list_issues(base, path, query)
            return self._create_issue(base, repo, body)
        if match := re.fullmatch(r"/issues/(\d+)(/labels|/comments)?", rest):
            number, sub = int(match[1]), match[2]
            if number not in self.issues:
                return not_found
            if sub is None and method == "GET":
                return 200, self.issue_payload(base, number), {}
            if sub is None and method == "PATCH":
                return self._edit_issue(base, number, body)
            if sub == "/labels" and method == "POST":
                return self._add_labels(base, number, body)
            if sub == "/comments" and method == "GET":
                items = sorted(self.comments_on(number), key=lambda c: c["id"])
                return self._page(base, path, query, items, self.comment_payload)
            if sub == "/comments" and method == "POST":
                if invalid := self._invalid_body(body):
                    return invalid
                login, kind = self.actor
                ident = self._store_comment(number, body["body"], login, kind)
                return 201, self.comment_payload(base, self.comments[ident]), {}
            return not_found
        if (match := re.fullmatch(r"/issues/comments/(\d+)", rest)) and method == "PATCH":
            comment = self.comments.get(int(match[1]))
            if comment is None:
                return not_found
            if (comment["login"], comment["type"]) != self.actor:
                # The fake token has no admin rights, so like GitHub it may only edit its own.
                return _error(403, "Resource not accessible by personal access token")
            if invalid := self._invalid_body(body):
                return invalid
            comment["body"] = body["body"]
            comment["updated_at"] = LATER
            return 200, self.comment_payload(base, comment), {}
        if rest == "/pulls" and method in ("GET", "POST"):
            if method == "GET":
                return self._list_pulls(base, path, query)
            return self._create_pull(base, repo, body)
        if match := re.fullmatch(r"/pulls/(\d+)(/requested_reviewers)?", rest):
            number, sub = int(match[1]), match[2]
            issue = self.issues.get(number)
            if issue is None or issue["pull"] is None:
                return not_found
            if sub is None and method == "GET":
                return 200, self.pull_payload(base, number), {}
            if sub is None and method == "PATCH":
                return self._edit_pull(base, number, body)
            if sub is not None and method == "POST":
                return self._request_reviews(base, number, body)
            return not_found
        if (match := re.fullmatch(r"/statuses/([0-9a-fA-F]+)", rest)) and method == "POST":
            return self._create_status(base, match[1], body)
        return not_found

    def _page(
        self,
        base: str,
        path: str,
        query: dict[str, list[str]],
        items: list[Any],
        render: Callable[[str, Any], dict[str, Any]],
    ) -> Reply:
        """One page of a list, with GitHub's Link header keeping the other query parameters."""
        per_page = min(int(query.get("per_page", ["30"])[0]), 100)
        page = int(query.get("page", ["1"])[0])
        chunk = items[(page - 1) * per_page : page * per_page]
        headers = {}
        if page * per_page < len(items):
            last = (len(items) + per_page - 1) // per_page
            kept = [(k, v) for k, vs in query.items() if k not in ("page", "per_page") for v in vs]
            link = f"{base}{path}?{urlencode([*kept, ('per_page', per_page)])}&page="
            headers["Link"] = f'<{link}{page + 1}>; rel="next", <{link}{last}>; rel="last"'
        return 200, [render(base, item) for item in chunk], headers

    # Issues (https://docs.github.com/rest/issues/issues) and labels (/rest/issues/labels).

    def _list_issues(self, base: str, path: str, query: dict[str, list[str]]) -> Reply:
        state = query.get("state", ["open"])[0]
        if state not in ("open", "closed", "all"):
            return _validation("Issue", "state", "invalid")
        wanted = {w.strip().casefold() for w in query.get("labels", [""])[0].split(",")} - {""}
        descending = query.get("direction", ["desc"])[0] != "asc"
        items = [
            number
            for number, issue in sorted(self.issues.items(), reverse=descending)
            if state in ("all", issue["state"])
            and wanted <= {label.casefold() for label in issue["labels"]}
        ]
        return self._page(base, path, query, items, self.issue_payload)

    def _create_issue(self, base: str, repo: str, body: Any) -> Reply:
        data = body if isinstance(body, dict) else {}
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            return _validation("Issue", "title", "missing_field")
        text = data.get("body")
        if invalid := _invalid_text("Issue", text):
            return invalid
        labels = data.get("labels") or []
        if not _names(labels):
            return _validation("Issue", "labels", "invalid")
        login, kind = self.actor
        number = self._next_number()
        self.issues[number] = self._new_issue(number, title, text, login, kind, labels)
        location = {"Location": f"{base}{repo}/issues/{number}"}
        return 201, self.issue_payload(base, number), location

    def _edit_issue(self, base: str, number: int, body: Any) -> Reply:
        data = body if isinstance(body, dict) else {}
        issue = self.issues[number]
        if "title" in data and (not isinstance(data["title"], str) or not data["title"].strip()):
            return _validation("Issue", "title", "missing_field")
        if "body" in data and (invalid := _invalid_text("Issue", data["body"])):
            return invalid
        if "state" in data and data["state"] not in ("open", "closed"):
            return _validation("Issue", "state", "invalid")
        if "labels" in data and not _names(data["labels"]):
            return _validation("Issue", "labels", "invalid")
        for key in ("title", "body"):
            if key in data:
                issue[key] = data[key]
        if "labels" in data:
            for label in data["labels"]:
                self.labels.setdefault(label, NEW_LABEL_COLOR)
            issue["labels"] = list(dict.fromkeys(data["labels"]))
        if "state" in data:
            issue["state"] = data["state"]
            issue["closed_at"] = LATER if data["state"] == "closed" else None
        issue["updated_at"] = LATER
        return 200, self.issue_payload(base, number), {}

    def _add_labels(self, base: str, number: int, body: Any) -> Reply:
        # The documented body is {"labels": [...]}; a bare array is accepted too (github3
        # sends one).
        labels = body.get("labels") if isinstance(body, dict) else body
        if not isinstance(labels, list) or not _names(labels):
            return _validation("Label", "labels", "invalid")
        issue = self.issues[number]
        for label in labels:
            self.labels.setdefault(label, NEW_LABEL_COLOR)
            if label not in issue["labels"]:
                issue["labels"].append(label)
        issue["updated_at"] = LATER
        return 200, [self.label_payload(base, name) for name in issue["labels"]], {}

    # Pull requests (https://docs.github.com/rest/pulls/pulls) and review requests
    # (/rest/pulls/review-requests).

    def _list_pulls(self, base: str, path: str, query: dict[str, list[str]]) -> Reply:
        state = query.get("state", ["open"])[0]
        if state not in ("open", "closed", "all"):
            return _validation("PullRequest", "state", "invalid")
        head = query.get("head", [None])[0]
        into = query.get("base", [None])[0]
        descending = query.get("direction", ["desc"])[0] != "asc"
        items = [
            issue["number"]
            for _, issue in sorted(self.issues.items(), reverse=descending)
            if issue["pull"] is not None
            and state in ("all", issue["state"])
            and (head is None or f"{self.owner}:{issue['pull']['head']}" == head)
            and (into is None or issue["pull"]["base"] == into)
        ]
        return self._page(
            base, path, query, items, lambda b, n: self.pull_payload(b, n, full=False)
        )

    def _create_pull(self, base: str, repo: str, body: Any) -> Reply:
        login, kind = self.actor
        if kind == "Bot" and not self.actions_can_open_pulls:
            return _error(
                403, "GitHub Actions is not permitted to create or approve pull requests."
            )
        data = body if isinstance(body, dict) else {}
        for key in ("title", "head", "base"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                return _validation("PullRequest", key, "missing_field")
        into = data["base"]
        if into not in self.branches:
            return _validation("PullRequest", "base", "invalid")
        owner, _, head = data["head"].rpartition(":")
        if (owner and owner != self.owner) or head not in self.branches:
            return _validation("PullRequest", "head", "invalid")
        if self._open_pull(head, into) is not None:
            message = f"A pull request already exists for {self.owner}:{head}."
            return _validation("PullRequest", None, "custom", message)
        if self.branches[head] == self.branches[into]:
            return _validation(
                "PullRequest", None, "custom", f"No commits between {into} and {head}"
            )
        if invalid := _invalid_text("PullRequest", data.get("body")):
            return invalid
        number = self._next_number()
        self.issues[number] = self._new_issue(
            number, data["title"], data.get("body"), login, kind, []
        )
        self.issues[number]["pull"] = self._new_pull(head, into)
        self.issues[number]["pull"]["draft"] = bool(data.get("draft"))
        location = {"Location": f"{base}{repo}/pulls/{number}"}
        return 201, self.pull_payload(base, number), location

    def _edit_pull(self, base: str, number: int, body: Any) -> Reply:
        data = body if isinstance(body, dict) else {}
        issue = self.issues[number]
        if "title" in data and (not isinstance(data["title"], str) or not data["title"].strip()):
            return _validation("PullRequest", "title", "missing_field")
        if "body" in data and (invalid := _invalid_text("PullRequest", data["body"])):
            return invalid
        if "state" in data and data["state"] not in ("open", "closed"):
            return _validation("PullRequest", "state", "invalid")
        if "base" in data and data["base"] not in self.branches:
            return _validation("PullRequest", "base", "invalid")
        pull = issue["pull"]
        if data.get("state") == "open" and issue["state"] == "closed":
            other = self._open_pull(pull["head"], data.get("base", pull["base"]))
            if other is not None:
                message = f"A pull request already exists for {self.owner}:{pull['head']}."
                return _validation("PullRequest", None, "custom", message)
        for key in ("title", "body"):
            if key in data:
                issue[key] = data[key]
        if "base" in data:
            pull["base"], pull["base_sha"] = data["base"], self.branches[data["base"]]
        if "state" in data:
            issue["state"] = data["state"]
            issue["closed_at"] = LATER if data["state"] == "closed" else None
        issue["updated_at"] = LATER
        return 200, self.pull_payload(base, number), {}

    def _request_reviews(self, base: str, number: int, body: Any) -> Reply:
        data = body if isinstance(body, dict) else {}
        users = data.get("reviewers") or []
        teams = data.get("team_reviewers") or []
        if not _names(users) or not _names(teams):
            return _validation("PullRequest", "reviewers", "invalid")
        if not users and not teams:
            return _validation("PullRequest", "reviewers", "missing_field")
        issue = self.issues[number]
        if issue["login"] in users:
            return _error(422, "Review cannot be requested from pull request author.")
        if any(u not in self.collaborators for u in users) or any(
            t not in self.teams for t in teams
        ):
            return _error(
                422,
                "Reviews may only be requested from collaborators. One or more of the users or "
                f"teams you specified is not a collaborator of the {self.owner}/{self.name} "
                "repository.",
            )
        pull = issue["pull"]
        asked, teamed = pull["requested_reviewers"], pull["requested_teams"]
        asked += [u for u in dict.fromkeys(users) if u not in asked]
        teamed += [t for t in dict.fromkeys(teams) if t not in teamed]
        issue["updated_at"] = LATER
        return 201, self.pull_payload(base, number, full=False), {}

    def _open_pull(self, head: str, into: str) -> int | None:
        return next(
            (p["number"] for p in self.open_pulls() if (p["head"], p["base"]) == (head, into)),
            None,
        )

    def _invalid_body(self, body: Any) -> Reply | None:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return _validation("IssueComment", "body", "missing_field")
        return _invalid_text("IssueComment", body["body"])

    def _create_status(self, base: str, sha: str, body: Any) -> Reply:
        if sha not in self.commits and sha not in self.branches.values():
            return _error(422, f"No commit found for SHA: {sha}")
        data = body if isinstance(body, dict) else {}
        if data.get("state") not in ("error", "failure", "pending", "success"):
            return _validation("Status", "state", "custom")
        if len(data.get("description") or "") > 140:
            message = "description is too long (maximum is 140 characters)"
            return _validation("Status", "description", "custom", message)
        existing = self.statuses.setdefault(sha, [])
        payload = self.status_payload(base, sha, data, len(existing) + 1)
        existing.append(payload)
        return 201, payload, {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return status, {"message": message, "documentation_url": DOCS}, headers or {}


def _validation(resource: str, field: str | None, code: str, message: str | None = None) -> Reply:
    """GitHub's 422: "Validation Failed" with one error object."""
    error: dict[str, str] = {"resource": resource, "code": code}
    if field is not None:
        error["field"] = field
    if message is not None:
        error["message"] = message
    return 422, {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS}, {}


def _invalid_text(resource: str, text: Any) -> Reply | None:
    if text is not None and not isinstance(text, str):
        return _validation(resource, "body", "invalid")
    if text is not None and len(text) > BODY_LIMIT:
        message = f"body is too long (maximum is {BODY_LIMIT} characters)"
        return _validation(resource, "body", "custom", message)
    return None


def _names(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) and v.strip() for v in values)


def _association(kind: str) -> str:
    return "NONE" if kind == "Bot" else "MEMBER"
