"""The serving runtime as a real process with a tiny model, used through the official client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PROJECT_ROOT
from tests.serving import Runtime, config, free_port, launch, running, wait_ready

KEY = "sk-llmops-test-0123456789abcdef"
NAME = "support-assistant"
USER = [{"role": "user", "content": "How do I reset my password?"}]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("serve")
    cfg = config(
        NAME,
        tiny_model,
        public_port=free_port(),
        api_key_env="LLMOPS_TEST_SERVE_KEY",
        limits={
            "max_body_bytes": 8192,
            "max_tokens": 64,
            "timeout_s": 60,
            "max_concurrency": 2,
            "max_queue": 8,
        },
        collect={"enabled": True, "dir": str(folder / "collected"), "seed": 0},
        smoke={"prompts": ["How do I reset my password?", "What does it cost?"], "max_tokens": 8},
    )
    with running(cfg, folder, env={"LLMOPS_TEST_SERVE_KEY": KEY}) as runtime:
        yield runtime


def client(runtime: Runtime, prefix: str = "/v1", key: str = KEY) -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}{prefix}", api_key=key, max_retries=0)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def auth_json() -> dict[str, str]:
    """A raw body as every client library sends one (others are refused with 415)."""
    return {**auth(), "Content-Type": "application/json"}


def greedy(runtime: Runtime, max_tokens: int = 16, **extra: Any) -> Any:
    return client(runtime).chat.completions.create(
        model=NAME, messages=USER, max_tokens=max_tokens, temperature=0, **extra
    )


def test_the_official_client_lists_models_chats_streams_and_completes(server: Runtime) -> None:
    api = client(server)
    models = api.models.list().data
    assert [m.id for m in models] == [NAME]
    assert models[0].owned_by == f"{NAME}@1"
    assert api.models.retrieve(NAME).id == NAME

    raw = api.chat.completions.with_raw_response.create(
        model=NAME, messages=USER, max_tokens=16, temperature=0
    )
    assert raw.headers["x-llmops-model-version"] == f"{NAME}@1"
    chat = raw.parse()
    answer = chat.choices[0].message.content
    assert chat.id.startswith("chatcmpl-") and chat.model == NAME
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(answer, str) and answer
    assert chat.choices[0].finish_reason in ("stop", "length")
    usage = chat.usage
    assert usage is not None and 1 <= usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert greedy(server).choices[0].message.content == answer  # temperature 0 is greedy

    sampled = [
        api.chat.completions.create(
            model=NAME, messages=USER, max_tokens=12, temperature=1.0, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]

    chunks = list(
        api.chat.completions.create(
            model=NAME,
            messages=USER,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == chat.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert len({c.id for c in chunks}) == 1

    completion = api.completions.create(
        model=NAME, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens <= 5
    pieces = api.completions.create(
        model=NAME, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == completion.choices[0].text

    kserve_prefix = client(server, "/openai/v1").chat.completions.create(
        model=NAME, messages=USER, max_tokens=16, temperature=0
    )
    assert kserve_prefix.choices[0].message.content == answer
    public = OpenAI(
        base_url=f"http://127.0.0.1:{server.cfg['public_port']}/v1", api_key=KEY, max_retries=0
    )
    assert public.models.list().data[0].id == NAME


def test_stop_sequences_cut_the_answer_before_them(server: Runtime) -> None:
    full = greedy(server, max_tokens=24).choices[0].message.content
    assert full is not None and len(full) >= 6, full
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.index(stop)]
    cut = greedy(server, max_tokens=24, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    chunks = client(server).chat.completions.create(
        model=NAME, messages=USER, max_tokens=24, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def test_each_bad_input_is_a_clear_openai_error_and_the_server_keeps_serving(
    server: Runtime,
) -> None:
    url = f"{server.url}/v1/chat/completions"

    malformed = httpx.post(url, content=b'{"model": "x", "messages": [', headers=auth_json())
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "invalid_json"
    assert "not valid JSON" in malformed.json()["error"]["message"]

    with pytest.raises(openai.NotFoundError) as unknown:
        client(server).chat.completions.create(model="gpt-4o", messages=USER)
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    assert f"serves '{NAME}'" in unknown.value.message

    big = json.dumps({"model": NAME, "messages": [{"role": "user", "content": "x" * 9000}]})
    too_long = httpx.post(url, content=big, headers=auth_json())
    assert too_long.status_code == 413
    assert "limit of 8192 bytes" in too_long.json()["error"]["message"]
    chunked = httpx.post(
        url, content=iter([big[:5000].encode(), big[5000:].encode()]), headers=auth_json()
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "request_too_large"

    missing = httpx.post(url, json={"model": NAME, "messages": USER})
    assert missing.status_code == 401
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert missing.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(server, key="sk-wrong").chat.completions.create(model=NAME, messages=USER)
    assert wrong.value.code == "invalid_api_key" and "invalid API key" in wrong.value.message

    api = client(server)
    with pytest.raises(openai.BadRequestError) as temperature:
        api.chat.completions.create(model=NAME, messages=USER, temperature=-1)
    assert temperature.value.param == "temperature"
    assert "greater than or equal to 0" in temperature.value.message
    with pytest.raises(openai.BadRequestError) as two:
        api.chat.completions.create(model=NAME, messages=USER, n=2)
    assert two.value.param == "n" and "only n=1" in two.value.message
    with pytest.raises(openai.BadRequestError) as long_answer:
        api.chat.completions.create(model=NAME, messages=USER, max_tokens=1000)
    assert "limit of 64" in long_answer.value.message and long_answer.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as misspelt:
        api.chat.completions.create(model=NAME, messages=USER, extra_body={"temprature": 0.5})
    assert "unrecognized request argument 'temprature'" in misspelt.value.message
    with pytest.raises(openai.BadRequestError) as role:
        api.chat.completions.create(model=NAME, messages=[{"role": "robot", "content": "hi"}])  # type: ignore[misc, list-item]
    assert "unknown role 'robot'" in role.value.message
    feedback = httpx.post(f"{server.url}/v1/feedback", json={"id": "x"}, headers=auth())
    assert feedback.status_code == 400 and feedback.json()["error"]["param"] == "rating"

    assert greedy(server, max_tokens=4).choices[0].message.content is not None


def _samples(runtime: Runtime) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{runtime.url}/metrics", headers=auth()).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_health_readiness_and_metrics(server: Runtime) -> None:
    assert httpx.get(f"{server.url}/").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    ready = httpx.get(f"{server.url}/v2/models/{NAME}/ready", headers=auth())
    assert ready.json()["ready"] is True
    ok = ("llmops_serve_requests_total", (("route", "/v1/chat/completions"), ("status", "200")))
    bad = ("llmops_serve_requests_total", (("route", "/v1/chat/completions"), ("status", "400")))
    tokens = ("llmops_serve_generated_tokens_total", ())
    before = _samples(server)
    generated = greedy(server, max_tokens=8).usage.completion_tokens  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model=NAME, messages=USER, n=3)
    after = _samples(server)
    assert after[ok] == before.get(ok, 0) + 1
    assert after[bad] == before.get(bad, 0) + 1
    assert after[tokens] == before.get(tokens, 0) + generated
    assert after[("llmops_serve_in_flight", ())] == 0
    assert ("llmops_serve_request_seconds_count", (("route", "/v1/chat/completions"),)) in after


def test_kserve_tensor_protocols_point_to_the_openai_routes(server: Runtime) -> None:
    refused = httpx.post(
        f"{server.url}/v2/models/{NAME}/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
        headers=auth(),
    )
    assert refused.status_code == 501
    assert "POST /openai/v1/chat/completions" in refused.text
    assert greedy(server, max_tokens=4).choices[0].message.content is not None


def test_the_example_application(server: Runtime) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "examples/openai_app/app.py"),
            "Can I export my data?",
            "--rating",
            "down",
            "--correction",
            "Yes, as CSV from Settings > Data.",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"LLMOPS_BASE_URL": f"{server.url}/v1", "LLMOPS_API_KEY": KEY, "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    # The answer is free text and may span lines; the app's own lines are "key: value".
    lines = dict(
        line.split(": ", 1)
        for line in result.stdout.splitlines()
        if line.split(": ", 1)[0] in ("id", "answer", "feedback")
    )
    assert lines["id"].startswith("chatcmpl-") and "answer" in lines
    assert lines["feedback"] == "feedback recorded"
    records = [
        json.loads(line)
        for path in Path(server.cfg["collect"]["dir"]).glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    mine = [r for r in records if r["id"] == lines["id"]]
    assert [r["type"] for r in mine] == ["interaction", "feedback"]
    assert mine[1]["correction"] == "Yes, as CSV from Settings > Data."

    refused = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "examples/openai_app/app.py"), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"LLMOPS_BASE_URL": f"{server.url}/v1", "LLMOPS_API_KEY": "wrong", "PATH": ""},
    )
    assert refused.returncode == 1 and "invalid API key" in refused.stderr


def _first_content(stream: Any) -> Iterator[Any]:
    """Chunks of a stream, yielded from the first with text (generation is then running)."""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk
            break
    yield from stream


def test_overload_429_timeout_504_and_graceful_shutdown(tiny_model: Path, tmp_path: Path) -> None:
    # Both share a public port, as the old and new process do during a local rollout.
    shared = free_port()
    busy = launch(
        config(
            NAME,
            tiny_model,
            public_port=shared,
            limits={"max_concurrency": 1, "max_queue": 0, "timeout_s": 60},
        ),
        tmp_path / "busy",
    )
    slow_cfg = config(NAME, tiny_model, public_port=shared, limits={"timeout_s": 0.001})
    slow = launch({**slow_cfg, "model_version": f"{NAME}@2"}, tmp_path / "slow")
    try:
        wait_ready(busy)
        wait_ready(slow)
        with pytest.raises(openai.InternalServerError) as late:
            client(slow).chat.completions.create(model=NAME, messages=USER, max_tokens=8)
        assert late.value.status_code == 504 and "timeout of 0.001 s" in late.value.message
        assert client(slow).models.list().data[0].id == NAME  # still serving

        api = client(busy)
        # min_tokens keeps the tiny model from ending early, so the first request holds
        # the only slot while the second arrives.
        long = api.chat.completions.create(
            model=NAME,
            messages=USER,
            max_tokens=200,
            stream=True,
            extra_body={"min_tokens": 200},
        )
        running_chunks = _first_content(long)
        next(running_chunks)
        with pytest.raises(openai.RateLimitError) as overloaded:
            api.chat.completions.create(model=NAME, messages=USER, max_tokens=4)
        assert overloaded.value.response.headers["retry-after"] == "1"
        assert "busy" in overloaded.value.message
        rest = list(running_chunks)
        assert rest[-1].choices[0].finish_reason == "length"
        assert api.chat.completions.create(model=NAME, messages=USER, max_tokens=4).choices

        # SIGTERM while a stream is running: it still ends normally, then the process exits 0.
        final = api.chat.completions.create(
            model=NAME, messages=USER, max_tokens=60, stream=True, extra_body={"min_tokens": 60}
        )
        in_flight = _first_content(final)
        texts = [next(in_flight).choices[0].delta.content]
        busy.proc.send_signal(signal.SIGTERM)
        for chunk in in_flight:
            texts.append(chunk.choices[0].delta.content if chunk.choices else "")
        assert chunk.choices[0].finish_reason == "length"
        assert busy.proc.wait(timeout=60) == 0
        log = busy.stderr()
        assert "stopping: finishing in-flight requests" in log and "stopped (exit 0)" in log
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{busy.url}/")
        # The shared port now reaches only the process still running.
        owners = {
            httpx.get(f"http://127.0.0.1:{shared}/v1/models").json()["data"][0]["owned_by"]
            for _ in range(6)
        }
        assert owners == {f"{NAME}@2"}
    finally:
        busy.stop()
        slow.stop()


def test_bad_config_exits_2_and_a_failing_model_exits_3(tiny_model: Path, tmp_path: Path) -> None:
    from tests.tiny import make_mute_model

    mute = make_mute_model(tiny_model, tmp_path / "mute")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")

    smoke = launch(config(NAME, mute), tmp_path / "smoke")
    load = launch(config(NAME, broken), tmp_path / "load")
    try:
        assert smoke.proc.wait(timeout=180) == 3
        assert load.proc.wait(timeout=180) == 3
    finally:
        smoke.stop()
        load.stop()
    assert "smoke check failed: prompt 1 ('Hello!') got an empty answer" in smoke.stderr()
    assert "model failed to load (transformers)" in load.stderr()
    assert "config.json' is not a valid JSON file" in load.stderr()
    for log in (smoke.stderr(), load.stderr()):
        assert "Traceback" not in log

    def run(cfg: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "bad.json"
        path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
        return subprocess.run(
            [sys.executable, "-m", "runners.serve", *([] if env else [str(path)])],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **(env or {})},
        )

    good = config(NAME, tiny_model)
    cases = [
        ({**good, "limits": {"max_tokenz": 5}}, "limits.max_tokenz: unknown field"),
        ({**good, "port": 0}, "port: Input should be greater than or equal to 1"),
        ('{"name": "x",', "not valid JSON"),
        ({**good, "backend": "llama-cpp"}, "backend 'llama-cpp' needs 'gguf_path'"),
        ({**good, "api_key_env": "LLMOPS_UNSET_KEY_VAR"}, "LLMOPS_UNSET_KEY_VAR is not set"),
    ]
    for cfg, expected in cases:
        result = run(cfg)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert str(tmp_path / "bad.json") in run(cases[0][0]).stderr

    from_env = run("", env={"LLMOPS_SERVE_CONFIG": json.dumps({**good, "port": "eighty"})})
    assert from_env.returncode == 2
    assert "$LLMOPS_SERVE_CONFIG: port: Input should be a valid integer" in from_env.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run({**good, "port": port})
    assert result.returncode == 2
    assert f"port: cannot listen on 127.0.0.1:{port}" in result.stderr
