"""`llmops models outdated` asks the hub (here a mirror on 127.0.0.1) and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.servers import json_handler, serve
from tests.tiny import model_spec

PINNED = "1" * 40
MOVED = "2" * 40


def model_info(sha: str) -> Callable[[], tuple[int, Any]]:
    # The fields huggingface_hub's ModelInfo reads, as /api/models/{repo} returns them.
    return lambda: (
        200,
        {
            "_id": "x",
            "id": "acme/tiny",
            "modelId": "acme/tiny",
            "sha": sha,
            "private": False,
            "downloads": 1,
            "likes": 0,
            "tags": [],
            "siblings": [{"rfilename": "config.json"}],
        },
    )


def test_outdated_reports_upstream_moves(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "specs/models").mkdir(parents=True)
    for name, repo in (("moved", "acme/tiny"), ("same", "acme/same"), ("gone", "acme/gone")):
        (tmp_path / f"specs/models/{name}.yaml").write_text(
            model_spec(name, {"type": "hub", "repo": repo, "revision": PINNED})
        )
    routes = {
        "/api/models/acme/tiny": model_info(MOVED),
        "/api/models/acme/same": model_info(PINNED),
    }
    before = sorted(p.read_text() for p in (tmp_path / "specs/models").iterdir())
    with serve(json_handler(routes)) as endpoint:
        result = run_cli(
            "models",
            "outdated",
            "--json",
            cwd=tmp_path,
            env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"},
        )
        text = run_cli(
            "models", "outdated", cwd=tmp_path, env={"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
        )
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["moved"]["upstream"] == MOVED
    assert rows["same"]["upstream"] == PINNED
    assert rows["gone"]["upstream"] is None and rows["gone"]["error"]
    assert "upstream moved 111111111111 -> 222222222222" in text.stdout
    assert sorted(p.read_text() for p in (tmp_path / "specs/models").iterdir()) == before


def test_outdated_offline_says_so(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "specs/models").mkdir(parents=True)
    (tmp_path / "specs/models/m.yaml").write_text(
        model_spec("m", {"type": "hub", "repo": "acme/tiny", "revision": PINNED})
    )
    result = run_cli("models", "outdated", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert "cannot check acme/tiny: offline" in result.stdout
