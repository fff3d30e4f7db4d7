"""Continuous batching in the transformers backend, on the tiny model: concurrent requests
share forward passes and each still gets exactly what it would have got alone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runners.serve.admission import Engine
from runners.serve.errors import APIError
from runners.serve.generation import GenerationCancelled, Sampling
from tests.serving import config, running

PROMPTS = [
    "How do I reset my password?",
    "Can I export my data?",
    "What does the Team plan cost? Tell me",
    "Paris",
    "The capital of France is",
]
MAX_TOKENS = [5, 30, 17, 40, 9]


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> Any:
    from runners.serve.backend_transformers import TransformersBackend

    loaded = TransformersBackend.load(tiny_model)
    yield loaded
    loaded.close()


def alone(backend: Any, prompt: str, max_tokens: int) -> str:
    """Plain `model.generate`, one prompt at a time: the reference."""
    inputs = backend.tokenizer(
        backend.chat_prompt([{"role": "user", "content": prompt}]),
        return_tensors="pt",
        add_special_tokens=False,
    )
    out = backend.model.generate(
        **inputs, max_new_tokens=max_tokens, do_sample=False, pad_token_id=backend.pad_token_id
    )
    return str(
        backend.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    )


async def answer(engine: Engine, backend: Any, prompt: str, sampling: Sampling) -> Any:
    chat = backend.chat_prompt([{"role": "user", "content": prompt}])
    job = await engine.start(chat, True, sampling, time.monotonic())
    streamed = "".join([piece async for piece in job.pieces()])
    result = await job.result()
    assert streamed == result.text  # the stream shows exactly the final text
    return result


def test_greedy_batched_answers_equal_unbatched_generate(backend: Any) -> None:
    expected = [alone(backend, p, m) for p, m in zip(PROMPTS, MAX_TOKENS, strict=True)]

    async def main() -> list[Any]:
        engine = Engine(backend, concurrency=len(PROMPTS), queue=0, timeout_s=120)

        async def staggered(index: int) -> Any:
            await asyncio.sleep(0.02 * index)  # later ones join a running decode batch
            sampling = Sampling(max_tokens=MAX_TOKENS[index], temperature=0)
            return await answer(engine, backend, PROMPTS[index], sampling)

        try:
            return await asyncio.gather(*(staggered(i) for i in range(len(PROMPTS))))
        finally:
            engine.close()

    steps_before = backend.scheduler.steps
    results = asyncio.run(main())
    assert [r.text for r in results] == expected
    for result, limit in zip(results, MAX_TOKENS, strict=True):
        assert result.completion_tokens <= limit
        assert result.finish_reason == ("length" if result.completion_tokens == limit else "stop")
    # They shared forward passes: fewer decode steps than tokens generated.
    assert backend.scheduler.max_batch_seen > 1
    assert backend.scheduler.steps - steps_before < sum(r.completion_tokens for r in results)


def test_max_tokens_stop_and_seed_per_request_in_one_batch(backend: Any) -> None:
    reference = alone(backend, PROMPTS[1], 30)
    stop = reference[6:9]
    assert stop and reference.find(stop) >= 1

    async def main() -> list[Any]:
        engine = Engine(backend, concurrency=4, queue=0, timeout_s=120)
        try:
            return await asyncio.gather(
                answer(engine, backend, PROMPTS[1], Sampling(max_tokens=30, temperature=0)),
                answer(
                    engine, backend, PROMPTS[1], Sampling(max_tokens=30, temperature=0, stop=[stop])
                ),
                answer(engine, backend, PROMPTS[1], Sampling(max_tokens=3, temperature=0)),
                answer(
                    engine,
                    backend,
                    PROMPTS[0],
                    Sampling(max_tokens=12, temperature=0.9, seed=7, min_tokens=12),
                ),
            )
        finally:
            engine.close()

    full, stopped, short, sampled = asyncio.run(main())
    assert full.text == reference
    assert stopped.text == reference[: reference.find(stop)] and stopped.finish_reason == "stop"
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert reference.startswith(short.text)
    assert sampled.completion_tokens == 12 and sampled.finish_reason == "length"
    again = asyncio.run(_one(backend, PROMPTS[0], Sampling(12, 0.9, seed=7, min_tokens=12)))
    assert again.text == sampled.text  # a seed gives the same sample, batched or not


async def _one(backend: Any, prompt: str, sampling: Sampling) -> Any:
    engine = Engine(backend, concurrency=1, queue=0, timeout_s=120)
    try:
        return await answer(engine, backend, prompt, sampling)
    finally:
        engine.close()


def test_a_cancelled_stream_frees_its_slot_and_a_full_queue_is_429(backend: Any) -> None:
    async def main() -> None:
        engine = Engine(backend, concurrency=1, queue=1, timeout_s=120)
        chat = backend.chat_prompt([{"role": "user", "content": PROMPTS[0]}])
        endless = Sampling(max_tokens=200, temperature=0, min_tokens=200)
        try:
            first = await engine.start(chat, True, endless, time.monotonic())
            stream = first.pieces()
            await anext(stream)  # it is generating and holds the only slot
            queued = asyncio.create_task(
                answer(engine, backend, PROMPTS[1], Sampling(max_tokens=4, temperature=0))
            )
            await asyncio.sleep(0.05)
            assert not queued.done()
            with pytest.raises(APIError) as full:  # one running, one queued: nothing more
                await engine.start(chat, True, endless, time.monotonic())
            assert full.value.status == 429
            await stream.aclose()  # the client went away mid-stream
            with pytest.raises(GenerationCancelled):
                await first.future
            second = await asyncio.wait_for(queued, timeout=60)
            assert second.completion_tokens <= 4
            assert engine.gate.admitted == 0 and not backend.scheduler.active
        finally:
            engine.close()

    asyncio.run(main())


def test_concurrent_http_requests_match_one_at_a_time(tiny_model: Path, tmp_path: Path) -> None:
    cfg = config(
        "batched",
        tiny_model,
        limits={"max_concurrency": 4, "max_queue": 8, "timeout_s": 120, "max_tokens": 64},
    )

    def body(index: int, stream: bool) -> dict[str, Any]:
        return {
            "model": "batched",
            "messages": [{"role": "user", "content": PROMPTS[index]}],
            "max_tokens": MAX_TOKENS[index],
            "temperature": 0,
            "stream": stream,
        }

    async def ask(client: httpx.AsyncClient, index: int, stream: bool) -> str:
        if not stream:
            reply = await client.post("/v1/chat/completions", json=body(index, False))
            assert reply.status_code == 200, reply.text
            return str(reply.json()["choices"][0]["message"]["content"])
        text = []
        async with client.stream("POST", "/v1/chat/completions", json=body(index, True)) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"]
                    if choice and choice[0]["delta"].get("content"):
                        text.append(choice[0]["delta"]["content"])
        return "".join(text)

    async def main(url: str) -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            one_by_one = [await ask(client, i, False) for i in range(len(PROMPTS))]
            together = await asyncio.gather(
                *(ask(client, i, i % 2 == 0) for i in range(len(PROMPTS)))
            )
            return one_by_one, list(together)

    with running(cfg, tmp_path) as runtime:
        one_by_one, together = asyncio.run(main(runtime.url))
    assert together == one_by_one
