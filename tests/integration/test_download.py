"""HTTP downloads resume where they stopped and are checked against the spec's sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from runners.pull import PullError
from runners.pull.http import download
from tests.servers import file_handler, serve


def test_interrupted_download_resumes_with_range(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(3 << 20)
    (served / "model.gguf").write_bytes(payload)
    log: list[dict] = []
    sha = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "out" / "model.gguf"
    target.parent.mkdir()
    with serve(file_handler(served, log, cut_after=1 << 20)) as url:
        with pytest.raises(PullError, match="run the pull again to resume"):
            download(f"{url}/model.gguf", target, sha, report=lambda _: None)
        partial = target.with_name("model.gguf.part")
        assert 0 < partial.stat().st_size < len(payload)
        have = partial.stat().st_size
        download(f"{url}/model.gguf", target, sha, report=lambda _: None)
    assert target.read_bytes() == payload
    assert log[-1]["range"] == f"bytes={have}-"


def test_checksum_mismatch_removes_the_download(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "m.gguf").write_bytes(b"not what the spec says")
    with serve(file_handler(served, [])) as url, pytest.raises(PullError, match="does not match"):
        download(f"{url}/m.gguf", tmp_path / "m.gguf", "0" * 64, report=lambda _: None)
    assert not (tmp_path / "m.gguf").exists()
    assert not (tmp_path / "m.gguf.part").exists()


def test_http_errors_are_reported(tmp_path: Path) -> None:
    with serve(file_handler(tmp_path, [])) as url, pytest.raises(PullError, match="404"):
        download(f"{url}/missing.gguf", tmp_path / "x.gguf", None, report=lambda _: None)
