"""Two local Deployments on one port are a validation error at the second one's port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.load.desired import load_desired

CANARY = """
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: canary}}
spec:
  model: base
  target: {target}
  port: 8000
"""


def test_validate_exits_2_naming_both_files(
    make_repo: Callable[..., Path], run_cli: Callable[..., Any]
) -> None:
    # specs/deployments/assistant.yaml takes the default port, 8000.
    root = make_repo({"specs/deployments/canary.yaml": CANARY.format(target="local")})
    result = run_cli("validate", cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "specs/deployments/canary.yaml:7:9: error: spec.port: port 8000 is already the port of "
        "Deployment 'assistant' (specs/deployments/assistant.yaml:4); local deployments both "
        "listen on 127.0.0.1:8000"
    ) in result.stderr
    assert "hint: give each local Deployment its own port" in result.stderr
    assert "Traceback" not in result.stderr


def test_other_ports_and_targets_do_not_clash(make_repo: Callable[..., Path]) -> None:
    root = make_repo({"specs/deployments/canary.yaml": CANARY.format(target="kserve")})
    assert load_desired(root).ok
    canary = CANARY.format(target="local").replace("port: 8000", "port: 8001")
    root = make_repo({"specs/deployments/canary.yaml": canary})
    assert load_desired(root).ok
