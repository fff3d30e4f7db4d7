"""Runner `pull`, HTTP(S): download one file with resume (Range) and a sha256 check."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from runners.pull.fetch import PullError

CHUNK = 1 << 20


def download(
    url: str,
    target: Path,
    sha256: str | None,
    report: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `target`; an interrupted download resumes from `target.part`."""
    import httpx
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    partial = target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream(
            "GET", url, headers=headers, timeout=timeout, follow_redirects=True
        ) as response:
            if response.status_code == 416:  # already complete
                response.close()
            elif response.status_code not in (200, 206):
                raise PullError(f"GET {url} answered {response.status_code}")
            else:
                if response.status_code == 200 and have:
                    report("server ignored the resume request; downloading from the start")
                    have = 0
                mode = "ab" if response.status_code == 206 else "wb"
                total = response.headers.get("content-length")
                expected = int(total) + have if total else None
                if have:
                    report(f"resuming {target.name} at {have:,} bytes")
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
                        handle.write(chunk)
                        progress.advance(task, len(chunk))
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
