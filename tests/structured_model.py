"""The tiny test model with a longer context, for structured-output and tool-calling tests:
tool descriptions and schemas in the prompt take more than its 256 positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.serving import config, free_port

CONTEXT = 2048
KEY = "sk-llmops-structured-0123456789"
NAME = "support-assistant"


def long_context(tiny: Path, folder: Path) -> Path:
    """A copy of the tiny Llama whose config allows CONTEXT positions (rotary embeddings
    have no learned table, so only the config changes)."""
    shutil.copytree(tiny, folder)
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg["max_position_embeddings"] = CONTEXT
    path.write_text(json.dumps(cfg))
    return folder


def structured_config(model: Path, **limits: Any) -> dict[str, Any]:
    return config(
        NAME,
        model,
        public_port=free_port(),
        api_key_env="LLMOPS_TEST_STRUCTURED_KEY",
        limits={
            "max_tokens": 400,
            "timeout_s": 120,
            "max_concurrency": 8,
            "max_queue": 64,
            "max_body_bytes": 65536,
            **limits,
        },
        smoke={"prompts": ["hi"], "max_tokens": 4},
    )
