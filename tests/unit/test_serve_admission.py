"""Admission and generation threads: 429 past the queue, 504 past the deadline, slots returned."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from runners.serve.admission import Engine, Gate
from runners.serve.errors import APIError
from runners.serve.generation import (
    Control,
    Generation,
    GenerationCancelled,
    GenerationTimeout,
    Sampling,
)


class Counting:
    """A backend that writes one word per step until told to stop or out of tokens."""

    kind = "test"
    context_length = None

    def __init__(self, release: threading.Event | None = None) -> None:
        self.release = release

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return messages[-1]["content"]

    def count_tokens(self, prompt: str, chat: bool) -> int:
        return len(prompt.split())

    def generate(
        self,
        prompt: str,
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation:
        done = 0
        while done < sampling.max_tokens and not control.should_stop():
            if self.release is not None:
                self.release.wait(0.01)
            emit(f"w{done} ")
            done += 1
        control.raise_if_stopped()
        return Generation("".join(f"w{i} " for i in range(done)), 1, done, "length")


def test_the_gate_refuses_past_concurrency_plus_queue() -> None:
    async def scenario() -> None:
        gate = Gate(concurrency=1, queue=1)
        release = await gate.enter(5)
        waiting = asyncio.ensure_future(gate.enter(5))
        await asyncio.sleep(0)
        with pytest.raises(APIError) as full:
            await gate.enter(5)
        assert full.value.status == 429 and full.value.headers == {"Retry-After": "1"}
        release()
        second = await waiting
        second()
        second()  # releasing twice gives back one slot only
        assert gate.admitted == 0
        third = await gate.enter(5)
        with pytest.raises(GenerationTimeout):
            await gate.enter(0.01)  # queued, and the slot is not freed in time
        third()
        assert gate.admitted == 0

    asyncio.run(scenario())


def test_a_generation_streams_then_returns_its_slot() -> None:
    async def scenario() -> None:
        engine = Engine(Counting(), concurrency=1, queue=0, timeout_s=30)
        job = await engine.start("p", True, Sampling(max_tokens=3), time.monotonic())
        pieces = [piece async for piece in job.pieces()]
        result = await job.result()
        assert pieces == ["w0 ", "w1 ", "w2 "] and result.text == "".join(pieces)
        await asyncio.sleep(0)
        assert engine.gate.admitted == 0
        engine.close()

    asyncio.run(scenario())


def test_past_the_deadline_the_thread_stops_and_the_request_times_out() -> None:
    async def scenario() -> None:
        engine = Engine(Counting(threading.Event()), concurrency=1, queue=0, timeout_s=0.05)
        job = await engine.start("p", True, Sampling(max_tokens=10**9), time.monotonic())
        with pytest.raises(GenerationTimeout):
            await job.result()
        await asyncio.sleep(0)
        assert engine.gate.admitted == 0  # the thread really ended
        engine.close()

    asyncio.run(scenario())


def test_an_abandoned_stream_cancels_its_generation() -> None:
    async def scenario() -> None:
        engine = Engine(Counting(threading.Event()), concurrency=1, queue=0, timeout_s=60)
        job = await engine.start("p", True, Sampling(max_tokens=10**9), time.monotonic())
        pieces = job.pieces()
        assert await anext(pieces) == "w0 "
        await pieces.aclose()  # the client went away
        with pytest.raises(GenerationCancelled):
            await job.result()
        await asyncio.sleep(0)
        assert engine.gate.admitted == 0
        engine.close()

    asyncio.run(scenario())
