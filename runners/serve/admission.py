"""Runner `serve`, admission: bounded admission and generation in threads off the event loop.

At most `max_concurrency` generations run (each in a worker thread) and `max_queue` wait;
anything more is refused at once (429). A slot is given back when the thread really ends,
not when the client stops listening, so a timed-out or abandoned request cannot let more
work in than the limit allows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from runners.serve.errors import APIError
from runners.serve.generation import (
    Backend,
    Control,
    Generation,
    GenerationCancelled,
    GenerationTimeout,
    Sampling,
)
from runners.serve.metrics import (
    GENERATED_TOKENS,
    IN_FLIGHT,
    MODEL_GENERATED_TOKENS,
    MODEL_REQUESTS,
    PROMPT_TOKENS,
    QUEUED,
    REJECTED,
)
from runners.serve.usage import current_usage

_END = object()
# How long past the deadline a thread may take to notice it before the client gets its 504.
GRACE_S = 2.0


def timeout_error(timeout_s: float) -> APIError:
    return APIError(
        504,
        f"generation took longer than this deployment's timeout of {timeout_s:g} s; "
        "ask for fewer tokens or retry later",
        type="timeout_error",
        code="timeout",
    )


class Gate:
    def __init__(self, concurrency: int, queue: int) -> None:
        self.capacity = concurrency + queue
        self.admitted = 0
        self.semaphore = asyncio.Semaphore(concurrency)

    async def enter(self, timeout_s: float) -> Callable[[], None]:
        """A release function once a slot is free; 429 when full, 504 after waiting too long."""
        if self.admitted >= self.capacity:
            REJECTED.labels("overload").inc()
            raise APIError(
                429,
                "the server is busy: every generation slot and queue place is taken; "
                "retry after a second",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self.admitted += 1
        QUEUED.inc()
        try:
            await asyncio.wait_for(self.semaphore.acquire(), timeout=max(timeout_s, 0))
        except TimeoutError:
            self.admitted -= 1
            raise GenerationTimeout() from None
        except BaseException:  # the client left while queued
            self.admitted -= 1
            raise
        finally:
            QUEUED.dec()
        IN_FLIGHT.inc()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                IN_FLIGHT.dec()
                self.admitted -= 1
                self.semaphore.release()

        return release


@dataclass(eq=False)
class Job:
    """One generation: text pieces arrive on `queue`, then the result on `future`."""

    control: Control
    queue: asyncio.Queue[object]
    future: asyncio.Future[Generation]

    async def pieces(self) -> AsyncIterator[str]:
        try:
            while True:
                left = self.control.deadline + GRACE_S - time.monotonic()
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=max(left, 0.001))
                except TimeoutError:
                    raise GenerationTimeout() from None
                if item is _END:
                    return
                assert isinstance(item, str)
                yield item
        finally:
            self.control.cancelled.set()  # no-op once finished; stops it when abandoned

    async def result(self) -> Generation:
        left = self.control.deadline + GRACE_S - time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(self.future), max(left, 0.001))
        except TimeoutError:
            self.control.cancelled.set()
            raise GenerationTimeout() from None
        except asyncio.CancelledError:
            self.control.cancelled.set()
            raise


class Engine:
    def __init__(
        self, backend: Backend, concurrency: int, queue: int, timeout_s: float, name: str = ""
    ) -> None:
        self.backend = backend
        self.name = name  # the base's served name: per-model metrics of a request sans adapter
        self.timeout_s = timeout_s
        self.gate = Gate(concurrency, queue)
        self.executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate")
        self.jobs: set[Job] = set()

    async def start(self, prompt: str, chat: bool, sampling: Sampling, started: float) -> Job:
        """Admit and start a generation; `started` (monotonic) is when the request arrived."""
        return await self.admit(lambda: (prompt, chat, sampling), started, prepare_in_thread=False)

    async def admit(
        self,
        prepare: Callable[[], tuple[str | list[int], bool, Sampling]],
        started: float,
        prepare_in_thread: bool = True,
    ) -> Job:
        """Admit, then `prepare` (render and tokenise the prompt, decide the sampling) in a
        generation thread, then start the generation.

        Preparing after admission means a request refused with 429 cost no tokenising, and
        no more prompts are being tokenised at once than there are generation slots."""
        deadline = started + self.timeout_s
        release = await self.gate.enter(deadline - time.monotonic())
        loop = asyncio.get_running_loop()
        if not prepare_in_thread:
            prompt, chat, sampling = prepare()
        else:
            try:
                submitted_prepare = self.executor.submit(prepare)
            except BaseException:
                release()
                raise
            try:
                prompt, chat, sampling = await asyncio.wrap_future(submitted_prepare)
            except BaseException:
                # A refused prompt, or the client left: the slot is free once the thread is.
                if submitted_prepare.done():
                    release()
                else:
                    submitted_prepare.add_done_callback(
                        lambda _: loop.call_soon_threadsafe(release)
                    )
                raise
        return self._run(prompt, chat, sampling, deadline, release)

    def _run(
        self,
        prompt: str | list[int],  # text, or a completions prompt's token ids
        chat: bool,
        sampling: Sampling,
        deadline: float,
        release: Callable[[], None],
    ) -> Job:
        loop = asyncio.get_running_loop()
        control = Control(deadline=deadline)
        queue: asyncio.Queue[object] = asyncio.Queue()
        # The request's usage (accounting.py), taken here in the request's context: the
        # generation thread does not inherit it.
        usage = current_usage()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        def work() -> Generation:
            try:
                result = self.backend.generate(prompt, chat, sampling, emit, control)
            except (GenerationCancelled, GenerationTimeout) as stopped:
                # Tokens made for a client that left (or ran out of time) cost the same
                # compute: counting them shows when an abandoned generation really stopped.
                GENERATED_TOKENS.inc(stopped.completion_tokens)
                if usage is not None:
                    usage.add(0, stopped.completion_tokens)
                raise
            else:
                PROMPT_TOKENS.inc(result.prompt_tokens)
                GENERATED_TOKENS.inc(result.completion_tokens)
                model = sampling.adapter or self.name
                MODEL_REQUESTS.labels(model).inc()
                MODEL_GENERATED_TOKENS.labels(model).inc(result.completion_tokens)
                if usage is not None:  # before the result reaches the event loop
                    usage.add(result.prompt_tokens, result.completion_tokens)
                return result
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        try:
            submitted: Future[Generation] = self.executor.submit(work)
        except BaseException:
            release()
            raise
        job = Job(control, queue, asyncio.wrap_future(submitted))
        self.jobs.add(job)

        def finished(future: asyncio.Future[Generation]) -> None:
            release()
            self.jobs.discard(job)
            if not future.cancelled():
                # A stream whose client left never awaits its result; read the exception
                # here, or asyncio logs "exception was never retrieved" with a traceback.
                future.exception()

        job.future.add_done_callback(finished)
        return job

    def cancel_all(self) -> None:
        for job in list(self.jobs):
            job.control.cancelled.set()

    def close(self) -> None:
        self.cancel_all()
        self.executor.shutdown(wait=False, cancel_futures=True)
