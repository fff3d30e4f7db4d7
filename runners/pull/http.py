"""Runner `pull`, HTTP(S): download one file with resume (Range), a size cap and a sha256 check.

Redirects are followed by hand, at most MAX_REDIRECTS, each target checked like the spec's URL
(https, no credentials; never from a remote host to a loopback one), and the size cap holds for
the declared length and for the bytes actually streamed, on whichever hop answers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from runners.pull.options import PullError
from runners.pull.urls import DEFAULT_MAX_BYTES, MAX_REDIRECTS, is_loopback, url_problem

if TYPE_CHECKING:
    import httpx

CHUNK = 1 << 20


def _over_cap(partial: Path, max_bytes: int, size: str) -> PullError:
    partial.unlink(missing_ok=True)
    return PullError(
        f"the download is larger than the source's max_bytes ({max_bytes:,} bytes): {size}; "
        "raise max_bytes in the Model spec if the file really is that large"
    )


def _next_hop(current: str, response: httpx.Response) -> str:
    target = urljoin(current, response.headers.get("location", ""))
    problem = url_problem(target, redirect=True)
    here = urlsplit(current).hostname or ""
    if problem is None and is_loopback(urlsplit(target).hostname or "") and not is_loopback(here):
        problem = "a remote server may not redirect to this machine"
    if problem:
        # The host only: a redirect target may be a signed URL, and messages reach logs.
        raise PullError(f"redirect from {here} refused: {problem}")
    return target


def download(
    url: str,
    target: Path,
    sha256: str | None,
    report: Callable[[str], None] = print,
    timeout: float = 60.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Fetch `url` to `target`; an interrupted download resumes from `target.part`."""
    import httpx

    problem = url_problem(url)
    if problem:
        raise PullError(f"refusing to download: {problem}")
    partial = target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    if have > max_bytes:
        raise _over_cap(partial, max_bytes, f"{have:,} bytes already downloaded")
    headers = {"Range": f"bytes={have}-"} if have else {}
    current = url
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                with client.stream("GET", current, headers=headers) as response:
                    if response.has_redirect_location:
                        current = _next_hop(current, response)
                        continue
                    if response.status_code == 416:  # already complete
                        break
                    if response.status_code not in (200, 206):
                        raise PullError(f"GET {current} answered {response.status_code}")
                    if response.status_code == 200 and have:
                        report("server ignored the resume request; downloading from the start")
                        have = 0
                    mode = "ab" if response.status_code == 206 else "wb"
                    total = response.headers.get("content-length")
                    expected = int(total) + have if total and total.isdigit() else None
                    if expected is not None and expected > max_bytes:
                        raise _over_cap(partial, max_bytes, f"the server declares {expected:,}")
                    if have:
                        report(f"resuming {target.name} at {have:,} bytes")
                    size = have
                    with (
                        partial.open(mode) as handle,
                        Progress(
                            "[progress.description]{task.description}",
                            BarColumn(),
                            DownloadColumn(),
                            TransferSpeedColumn(),
                            transient=True,
                        ) as progress,
                    ):
                        task = progress.add_task(target.name, total=expected, completed=have)
                        for chunk in response.iter_bytes(CHUNK):
                            size += len(chunk)
                            if size > max_bytes:
                                handle.close()
                                raise _over_cap(partial, max_bytes, "more was sent")
                            handle.write(chunk)
                            progress.advance(task, len(chunk))
                    break
            else:
                raise PullError(f"{url}: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as err:
        raise PullError(f"download of {url} failed: {err}; run the pull again to resume") from err
    if sha256:
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise PullError(
                f"{url}: sha256 {digest.hexdigest()} does not match the spec's "
                f"{sha256}; the partial download was removed"
            )
    partial.replace(target)
    return target
