"""Security, URL model sources: https (loopback http for tests), sha256, a size cap, no secrets.

Issue 27, class 10. Validation runs on real spec repositories; downloads run against real HTTP
servers on 127.0.0.1 that redirect, stream without end or lie about their size.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from controller.load.desired import load_desired
from runners.pull import PullError
from runners.pull.fetch import FetchOptions, fetch
from runners.pull.http import download
from tests.servers import serve

SHA = "0" * 64


def model(url: str, sha256: str | None = SHA, **extra: object) -> str:
    source: dict[str, object] = {"type": "url", "url": url, **extra}
    if sha256:
        source["sha256"] = sha256
    return (
        "apiVersion: llmops/v1\nkind: Model\nmetadata:\n  name: web\nspec:\n"
        f"  source: {json.dumps(source)}\n"
    )


def url_problems(make_repo: Callable[..., Path], text: str) -> list[tuple[int, str, str, str]]:
    root = make_repo({"specs/models/web.yaml": text})
    return [
        (d.line, d.path, d.message, d.hint)
        for d in load_desired(root).diagnostics
        if d.file == "specs/models/web.yaml"
    ]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (model("https://models.example.com/m.gguf", sha256=None), "spec.source.sha256", "sha256"),
        (model("http://models.example.com/m.gguf"), "spec.source.url", "https"),
        (
            model(
                "https://bucket.s3.amazonaws.com/m.gguf?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                "&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=8f1e2d"
            ),
            "spec.source.url",
            "X-Amz-",
        ),
        (model("https://cdn.example.com/m.gguf?token=abc123"), "spec.source.url", "token"),
        (
            model("https://acct.blob.core.windows.net/c/m.gguf?sv=2022&sig=Zm9v"),
            "spec.source.url",
            "sig",
        ),
        # Refused before too, by the inline-secret check (a password in a URL).
        (model("https://alice:hunter2@models.example.com/m.gguf"), "spec.source.url", ""),
        (model("https://deploy@models.example.com/m.gguf"), "spec.source.url", "credentials"),
        (model("https://models.example.com/m.gguf", max_bytes=0), "spec.source.max_bytes", ""),
    ],
    ids=[
        "no-sha256",
        "plain-http",
        "presigned-s3",
        "token",
        "azure-sas",
        "password",
        "userinfo",
        "cap-0",
    ],
)
def test_unsafe_url_sources_are_refused_at_validate(
    make_repo: Callable[..., Path], text: str, field: str, words: str
) -> None:
    found = url_problems(make_repo, text)
    at = [p for p in found if p[1] == field]
    assert at, f"accepted: {found}"
    line, _, message, hint = at[0]
    assert line >= 5 and hint, at[0]
    assert words in message + hint, at[0]


@pytest.mark.parametrize(
    "url",
    [
        "https://models.example.com/m.gguf",
        "https://models.example.com/m.gguf?download=true",
        "http://127.0.0.1:8000/m.gguf",
        "http://localhost:8000/m.gguf",
    ],
)
def test_safe_url_sources_are_accepted(make_repo: Callable[..., Path], url: str) -> None:
    assert url_problems(make_repo, model(url)) == []


def stream_handler(routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                route(self)  # the client may hang up, as it should past the cap

    return Handler


def redirect(to: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return answer


def endless(handler: BaseHTTPRequestHandler) -> None:
    """No Content-Length, and a body far past any cap (64 MiB keeps the old code finite)."""
    handler.send_response(200)
    handler.end_headers()
    chunk = b"\0" * (1 << 20)
    for _ in range(64):
        handler.wfile.write(chunk)
    handler.close_connection = True


def huge(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(1 << 40))
    handler.end_headers()
    handler.wfile.write(b"\0" * 1024)
    handler.close_connection = True


CAP = 1 << 20


def written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_redirect_to_an_endless_body_is_cut_at_the_cap(tmp_path: Path) -> None:
    routes = {"/start.gguf": redirect("/endless.gguf"), "/endless.gguf": endless}
    dest = tmp_path / "pull" / "model"
    with serve(stream_handler(routes)) as url:
        source = {"type": "url", "url": f"{url}/start.gguf", "sha256": SHA, "max_bytes": CAP}
        with pytest.raises(PullError, match="max_bytes"):
            fetch(source, dest, FetchOptions(tmp_path, report=lambda _: None))
    assert written(tmp_path / "pull") <= CAP


def test_declared_size_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    with (
        serve(stream_handler({"/huge.gguf": huge})) as url,
        pytest.raises(PullError, match="max_bytes"),
    ):
        download(f"{url}/huge.gguf", tmp_path / "m.gguf", SHA, lambda _: None, max_bytes=CAP)
    assert written(tmp_path) == 0


def test_redirect_to_plain_http_elsewhere_is_refused(tmp_path: Path) -> None:
    routes = {"/start.gguf": redirect("http://models.example.invalid/m.gguf")}
    with serve(stream_handler(routes)) as url, pytest.raises(PullError, match="https"):
        download(f"{url}/start.gguf", tmp_path / "m.gguf", SHA, lambda _: None)


def test_redirect_loops_are_cut_short(tmp_path: Path) -> None:
    hits: list[int] = []

    def loop(handler: BaseHTTPRequestHandler) -> None:
        hits.append(1)
        redirect("/loop.gguf")(handler)

    with (
        serve(stream_handler({"/loop.gguf": loop})) as url,
        pytest.raises(PullError, match="more than 5 redirects"),
    ):
        download(f"{url}/loop.gguf", tmp_path / "m.gguf", SHA, lambda _: None)
    assert len(hits) == 6


@pytest.mark.parametrize(
    "url",
    ["http://models.example.invalid/m.gguf", "https://u:p@models.example.invalid/m.gguf"],
)
def test_runner_refuses_unsafe_urls_without_connecting(tmp_path: Path, url: str) -> None:
    with pytest.raises(PullError, match="https|credentials"):
        download(url, tmp_path / "m.gguf", SHA, lambda _: None)


def test_runner_refuses_a_url_source_without_sha256(tmp_path: Path) -> None:
    source = {"type": "url", "url": "https://models.example.invalid/m.gguf"}
    with pytest.raises(PullError, match="sha256"):
        fetch(source, tmp_path / "model", FetchOptions(tmp_path, report=lambda _: None))
