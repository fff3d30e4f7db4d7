"""Several LoRA adapters on one base in one serving process (transformers backend): the
request's model picks the adapter, mixed batches answer as each adapter alone, and adapters
load and unload while the others keep answering."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from runners.serve.config import ConfigError, parse_config
from tests.serving import config, running
from tests.tiny import make_random_adapter

PROMPTS = ["How do I reset my password?", "Can I export my data?", "Paris"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_random_adapter(tiny_model, root / name, seed)
        for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3))
    }


def alone(folder: Path) -> dict[str, str]:
    """Each prompt's greedy answer from `folder` loaded by itself (an adapter merged on its
    base, as a deployment of that one version serves it), with plain `model.generate`."""
    from runners.serve.backend_transformers import TransformersBackend

    backend = TransformersBackend.load(folder)
    try:
        answers = {}
        for prompt in PROMPTS:
            inputs = backend.tokenizer(
                backend.chat_prompt([{"role": "user", "content": prompt}]),
                return_tensors="pt",
                add_special_tokens=False,
            )
            out = backend.model.generate(
                **inputs,
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                pad_token_id=backend.pad_token_id,
            )
            answers[prompt] = backend.tokenizer.decode(
                out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
        return answers
    finally:
        backend.close()


@pytest.fixture(scope="module")
def references(tiny_model: Path, adapters: dict[str, Path]) -> dict[str, dict[str, str]]:
    found = {"base": alone(tiny_model), **{n: alone(p) for n, p in adapters.items()}}
    # The adapters must change the answers, or this file would prove nothing.
    assert len({json.dumps(a, sort_keys=True) for a in found.values()}) == len(found), found
    return found


def chat(url: str, model: str, prompt: str, stream: bool = False) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": stream,
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def text_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def streamed(url: str, model: str, prompt: str) -> str:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    pieces = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read().decode()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                assert "error" not in event, event
                for choice in event.get("choices", []):
                    pieces.append(choice["delta"].get("content") or "")
    return "".join(pieces)


def test_adapters_share_one_process_and_its_batches(
    tiny_model: Path,
    adapters: dict[str, Path],
    references: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    served = [{"name": n, "version": f"{n}@1", "dir": str(adapters[n])} for n in ("alpha", "beta")]
    cfg = config("base", tiny_model, adapters=served)
    cfg["limits"] = {"max_concurrency": 8, "max_queue": 16}
    with running(cfg, tmp_path / "rt") as runtime:
        url = runtime.url
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["owned_by"]) for m in listed] == [
            ("base", "base@1"),
            ("alpha", "alpha@1"),
            ("beta", "beta@1"),
        ]
        # One at a time: each model answers as it does alone.
        for model in ("base", "alpha", "beta"):
            for prompt in PROMPTS:
                response = chat(url, model, prompt)
                assert text_of(response) == references[model][prompt], (model, prompt)
                assert response.json()["model"] == model
                assert response.headers["x-llmops-model-version"] == "base@1"
                assert response.json()["system_fingerprint"] == f"{model}@1"
        # All at once: rows of different adapters share the batch and still answer alike.
        jobs = [(m, p) for _ in range(2) for m in ("base", "alpha", "beta") for p in PROMPTS]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: text_of(chat(url, *job)), jobs))
        assert answers == [references[m][p] for m, p in jobs]
        log = runtime.stderr()
        # An unknown model is a 404 that names what is served.
        missing = chat(url, "delta", PROMPTS[0])
        assert missing.status_code == 404
        message = missing.json()["error"]["message"]
        assert "'base', 'alpha', 'beta'" in message
        metrics = httpx.get(f"{url}/metrics").text
        for model in ("base", "alpha", "beta"):
            assert f'llmops_serve_model_requests_total{{model="{model}"}} 9.0' in metrics
            assert f'llmops_serve_model_ready{{model="{model}"}} 1.0' in metrics
    assert "Traceback" not in log


def test_an_adapter_loads_and_unloads_while_another_streams(
    tiny_model: Path,
    adapters: dict[str, Path],
    references: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    served = [{"name": "alpha", "version": "alpha@1", "dir": str(adapters["alpha"])}]
    cfg = config("base", tiny_model, adapters=served)
    with running(cfg, tmp_path / "rt") as runtime:
        url = runtime.url
        stop = threading.Event()
        seen: dict[str, Any] = {"answered": 0, "failures": []}

        def stream_alpha() -> None:
            while not stop.is_set():
                for prompt in PROMPTS:
                    try:
                        text = streamed(url, "alpha", prompt)
                    except (AssertionError, httpx.HTTPError) as err:
                        seen["failures"].append(repr(err))
                        continue
                    if text != references["alpha"][prompt]:
                        seen["failures"].append(f"alpha answered {text!r} to {prompt!r}")
                    seen["answered"] += 1

        client = threading.Thread(target=stream_alpha, daemon=True)
        client.start()
        try:
            assert chat(url, "gamma", PROMPTS[0]).status_code == 404
            loaded = httpx.post(
                f"{url}/v2/adapters/gamma",
                json={"version": "gamma@1", "dir": str(adapters["gamma"])},
                timeout=60,
            )
            assert loaded.status_code == 200, loaded.text
            assert httpx.get(f"{url}/v2/adapters/gamma/ready").status_code == 200
            ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
            assert ids == ["base", "alpha", "gamma"]
            for prompt in PROMPTS:
                assert text_of(chat(url, "gamma", prompt)) == references["gamma"][prompt]
            # A second load under a served name is refused; so is another base's adapter.
            again = httpx.post(
                f"{url}/v2/adapters/gamma",
                json={"version": "gamma@2", "dir": str(adapters["beta"])},
            )
            assert again.status_code == 409
            not_adapter = httpx.post(
                f"{url}/v2/adapters/delta", json={"version": "d@1", "dir": str(tiny_model)}
            )
            assert not_adapter.status_code == 400
            assert "not a LoRA adapter folder" in not_adapter.json()["error"]["message"]
            removed = httpx.delete(f"{url}/v2/adapters/gamma", timeout=120)
            assert removed.status_code == 200, removed.text
            gone = chat(url, "gamma", PROMPTS[0])
            assert gone.status_code == 404
            assert "'base', 'alpha'" in gone.json()["error"]["message"]
            assert httpx.get(f"{url}/v2/adapters/gamma/ready").status_code == 404
        finally:
            stop.set()
            client.join()
        assert seen["answered"] > 0
        assert seen["failures"] == []
        # Removing the last adapter leaves the base, and another can be loaded afterwards.
        assert httpx.delete(f"{url}/v2/adapters/alpha", timeout=120).status_code == 200
        assert chat(url, "alpha", PROMPTS[0]).status_code == 404
        assert text_of(chat(url, "base", PROMPTS[0])) == references["base"][PROMPTS[0]]
        reloaded = httpx.post(
            f"{url}/v2/adapters/beta",
            json={"version": "beta@1", "dir": str(adapters["beta"])},
            timeout=60,
        )
        assert reloaded.status_code == 200, reloaded.text
        for prompt in PROMPTS:
            assert text_of(chat(url, "beta", prompt)) == references["beta"][prompt]
    assert "Traceback" not in runtime.stderr()


def test_config_refuses_adapters_it_cannot_serve(tmp_path: Path) -> None:
    base = {"name": "base", "model_version": "base@1", "model_dir": str(tmp_path)}
    adapter = {"name": "alpha", "version": "alpha@1", "dir": str(tmp_path / "a")}
    with pytest.raises(ConfigError, match=r"adapters\[1\]: the name 'alpha' is taken"):
        parse_config(json.dumps({**base, "adapters": [adapter, adapter]}), "serve.json")
    with pytest.raises(ConfigError, match=r"adapters\[0\]: the name 'base' is taken"):
        parse_config(json.dumps({**base, "adapters": [{**adapter, "name": "base"}]}), "s.json")
    gguf = {**base, "backend": "llama-cpp", "gguf_path": "m.gguf", "adapters": [adapter]}
    with pytest.raises(ConfigError, match="only backend 'transformers' serves LoRA adapters"):
        parse_config(json.dumps(gguf), "serve.json")


def test_apply_rollout_adds_and_removes_an_adapter_in_place(
    tiny_model: Path,
    adapters: dict[str, Path],
    references: dict[str, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What apply does for target local when only `adapters` changed (runners/deploy/local.py
    `rollout`): the running process loads the new adapter and unloads the old one, with the
    deployment's key, while a client streams from another adapter without one failure."""
    from runners.deploy import local
    from runners.serve import ports

    monkeypatch.setenv(ports.CLAIMS_ENV, str(tmp_path / "claims"))
    folder, public = tmp_path / "deployment", local.free_port()
    key = {"Authorization": "Bearer sk-adapters"}

    def cfg(*names: str) -> dict[str, Any]:
        return {
            "name": "base",
            "model_version": "base@1",
            "model_dir": str(tiny_model),
            "host": "127.0.0.1",
            "public_port": public,
            "api_key_env": "ADAPTER_TEST_KEY",
            "smoke": {"prompts": ["Hello!"], "max_tokens": 4},
            "adapters": [{"name": n, "version": f"{n}@1", "dir": str(adapters[n])} for n in names],
        }

    def rollout(config: dict[str, Any], digest: str) -> tuple[Any, str]:
        env = {"ADAPTER_TEST_KEY": "sk-adapters"}
        return local.rollout("base", "base@1", config, folder, env, digest, key="sk-adapters")

    first, happened = rollout(cfg("alpha"), "d1")
    url = f"http://127.0.0.1:{public}"
    try:
        assert happened == "started"
        stop = threading.Event()
        seen: dict[str, Any] = {"answered": 0, "failures": []}

        def stream_alpha() -> None:
            body = {
                "model": "alpha",
                "messages": [{"role": "user", "content": PROMPTS[0]}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "stream": True,
            }
            while not stop.is_set():
                try:
                    with httpx.stream(
                        "POST", f"{url}/v1/chat/completions", json=body, headers=key, timeout=60
                    ) as response:
                        lines = list(response.iter_lines())
                    if response.status_code != 200 or "data: [DONE]" not in lines:
                        seen["failures"].append(f"{response.status_code} {lines[-2:]}")
                    else:
                        seen["answered"] += 1
                except Exception as err:  # any failure is a failed request
                    seen["failures"].append(repr(err))

        def answered(more: int) -> None:
            until, goal = time.monotonic() + 120, seen["answered"] + more
            while seen["answered"] < goal and time.monotonic() < until and not seen["failures"]:
                time.sleep(0.05)

        client = threading.Thread(target=stream_alpha, daemon=True)
        client.start()
        try:
            answered(2)
            added, happened = rollout(cfg("alpha", "gamma"), "d2")
            assert happened == "adapters changed" and added.pid == first.pid
            gamma = httpx.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "gamma",
                    "messages": [{"role": "user", "content": PROMPTS[1]}],
                    "max_tokens": MAX_TOKENS,
                    "temperature": 0,
                },
                headers=key,
                timeout=60,
            )
            assert text_of(gamma) == references["gamma"][PROMPTS[1]]
            answered(2)
            removed, happened = rollout(cfg("alpha"), "d3")
            assert happened == "adapters changed" and removed.pid == first.pid
            gone = httpx.post(
                f"{url}/v1/chat/completions",
                json={"model": "gamma", "messages": [{"role": "user", "content": "hi"}]},
                headers=key,
            )
            assert gone.status_code == 404
            answered(2)
            again, happened = rollout(cfg("alpha"), "d3")
            assert happened == "unchanged" and again.pid == first.pid
        finally:
            stop.set()
            client.join()
        assert seen["answered"] > 0 and seen["failures"] == [], seen
        # The admin routes need the deployment's key like every other route.
        assert httpx.get(f"{url}/v2/adapters").status_code == 401
        # A later restart (any other change) starts from the adapters now served.
        state = local.current(folder)
        assert state is not None
        written = json.loads(Path(state.config_path).read_text())
        assert [a["name"] for a in written["adapters"]] == ["alpha"]
    finally:
        local.stop(folder)


def test_a_new_version_of_a_served_adapter_swaps_in_without_a_404(
    tiny_model: Path,
    adapters: dict[str, Path],
    references: dict[str, dict[str, str]],
    tmp_path: Path,
) -> None:
    """PUT /v2/adapters/alpha with another version while clients stream from alpha: every
    answer is wholly the old version's or wholly the new one's (a request admitted before the
    swap finishes on the old weights), none fails, and after the PUT only the new one answers."""
    served = [{"name": "alpha", "version": "alpha@1", "dir": str(adapters["alpha"])}]
    cfg = config("base", tiny_model, adapters=served)
    old, new = references["alpha"], references["gamma"]  # alpha@2 is gamma's weights
    with running(cfg, tmp_path / "rt") as runtime:
        url = runtime.url
        stop = threading.Event()
        seen: dict[str, Any] = {"old": 0, "new": 0, "failures": []}

        def stream_alpha() -> None:
            while not stop.is_set():
                for prompt in PROMPTS:
                    try:
                        text = streamed(url, "alpha", prompt)
                    except (AssertionError, httpx.HTTPError) as err:
                        seen["failures"].append(repr(err))
                        continue
                    if text == old[prompt]:
                        seen["old"] += 1
                    elif text == new[prompt]:
                        seen["new"] += 1
                    else:
                        seen["failures"].append(f"alpha answered {text!r} to {prompt!r}")

        clients = [threading.Thread(target=stream_alpha, daemon=True) for _ in range(3)]
        for client in clients:
            client.start()
        try:
            while seen["old"] < 6:
                time.sleep(0.05)
            swapped = httpx.put(
                f"{url}/v2/adapters/alpha",
                json={"version": "alpha@2", "dir": str(adapters["gamma"])},
                timeout=120,
            )
            assert swapped.status_code == 200, swapped.text
            assert swapped.json()["adapters"] == [{"name": "alpha", "version": "alpha@2"}]
            after = seen["new"]
            for prompt in PROMPTS:
                assert text_of(chat(url, "alpha", prompt)) == new[prompt]
            while seen["new"] < after + 6:
                time.sleep(0.05)
        finally:
            stop.set()
            for client in clients:
                client.join()
        assert seen["failures"] == []
        cards = httpx.get(f"{url}/v1/models").json()["data"]
        listed = [(m["id"], m["owned_by"]) for m in cards]
        assert listed == [("base", "base@1"), ("alpha", "alpha@2")]
        # PUT of a name not served loads it, as POST does.
        added = httpx.put(
            f"{url}/v2/adapters/beta",
            json={"version": "beta@1", "dir": str(adapters["beta"])},
            timeout=60,
        )
        assert added.status_code == 200, added.text
        assert text_of(chat(url, "beta", PROMPTS[0])) == references["beta"][PROMPTS[0]]
    assert "Traceback" not in runtime.stderr()
