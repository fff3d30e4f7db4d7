"""Issue 27, class 11: no work before admission. The runtime's routes in this process over
the real tiny model (a spy counts the tokenizer's calls): an oversize prompt is refused
before tokenising, a full server refuses before tokenising, and collection (redaction and
the file lock) runs off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from runners.serve.collect import Collector
from runners.serve.config import ServeConfig
from runners.serve.model import ServeModel
from runners.serve.routes import Service, register_routes

NAME = "work"


class Spy:
    """Counts calls into the backend's tokenizer and chat template."""

    def __init__(self, backend: Any) -> None:
        self.calls = 0
        for name in ("count_tokens", "chat_prompt"):
            real = getattr(backend, name)
            setattr(backend, name, self.counting(real))

    def counting(self, real: Any) -> Any:
        def call(*args: Any) -> Any:
            self.calls += 1
            return real(*args)

        return call


class SlowCollector(Collector):
    """Redaction that takes a while, noting the thread each write ran on."""

    delay_s = 0.0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: list[int] = []

    def _redact(self, text: str | None) -> str | None:
        time.sleep(self.delay_s)
        return super()._redact(text)

    def _append(self, record: dict[str, Any]) -> None:
        self.threads.append(threading.get_ident())
        super()._append(record)


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Iterator[ServeModel]:
    cfg = ServeConfig.model_validate(
        {
            "name": NAME,
            "model_version": f"{NAME}@1",
            "model_dir": str(tiny_model),
            "limits": {"max_concurrency": 1, "max_queue": 0, "max_tokens": 8},
            "smoke": {"prompts": ["hi"], "max_tokens": 4},
        }
    )
    served = ServeModel(cfg)
    served.load()
    yield served


def app_for(model: ServeModel, collector: Collector | None = None) -> tuple[FastAPI, Service]:
    service = Service(model.config, model, collector)
    service.start_engine()
    app = FastAPI()
    register_routes(app, service)
    return app, service


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def chat(content: str) -> dict[str, Any]:
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


def test_an_oversize_prompt_is_refused_without_tokenising(model: ServeModel) -> None:
    app, service = app_for(model)
    spy = Spy(model.backend)

    async def go() -> list[httpx.Response]:
        async with client(app) as http:
            # Far more characters than the context could hold, well under the body limit.
            huge = await http.post("/v1/chat/completions", json=chat("lorem ipsum " * 60_000))
            prompt = {"model": NAME, "prompt": "x" * 500_000, "max_tokens": 4}
            huge_completion = await http.post("/v1/completions", json=prompt)
            return [huge, huge_completion]

    try:
        for answer in asyncio.run(go()):
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == "context_length_exceeded"
        assert spy.calls == 0, f"the tokenizer ran {spy.calls} time(s) on a refused prompt"
    finally:
        assert service.engine is not None
        service.engine.close()


def test_a_full_server_refuses_before_tokenising(model: ServeModel) -> None:
    app, service = app_for(model)
    spy = Spy(model.backend)
    engine = service.engine
    assert engine is not None

    async def go() -> httpx.Response:
        release = await engine.gate.enter(10)  # max_concurrency 1, max_queue 0: now full
        try:
            async with client(app) as http:
                return await http.post("/v1/chat/completions", json=chat("hello"))
        finally:
            release()

    try:
        answer = asyncio.run(go())
        assert answer.status_code == 429, answer.text
        assert spy.calls == 0, f"the tokenizer ran {spy.calls} time(s) for a refused request"
    finally:
        engine.close()


def test_collection_runs_off_the_event_loop(model: ServeModel, tmp_path: Path) -> None:
    collector = SlowCollector(tmp_path, NAME, f"{NAME}@1", 1.0, True, 0)
    app, service = app_for(model, collector)

    async def go() -> tuple[int, float]:
        loop_thread = threading.get_ident()
        async with client(app) as http:
            assert (await http.post("/v1/chat/completions", json=chat("hi"))).status_code == 200
            collector.delay_s = 1.0
            body = {"id": "chatcmpl-1", "rating": "down", "correction": "mail a@b.example"}
            slow = asyncio.ensure_future(http.post("/v1/feedback", json=body))
            await asyncio.sleep(0.2)  # the feedback is in its slow redaction now
            started = time.monotonic()
            listed = await http.get("/v1/models")
            waited = time.monotonic() - started
            assert listed.status_code == 200
            assert (await slow).status_code == 200
        return loop_thread, waited

    try:
        loop_thread, waited = asyncio.run(go())
        assert len(collector.threads) == 2
        assert loop_thread not in collector.threads, "collection ran on the event loop"
        assert waited < 0.5, f"a concurrent request waited {waited:.2f} s for the redaction"
    finally:
        assert service.engine is not None
        service.engine.close()
