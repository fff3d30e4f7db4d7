"""/v1/embeddings' request model and response encoding (runners/serve/embeddings.py), and the
runtime config's `embeddings` section."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from runners.serve.config import ConfigError, parse_config
from runners.serve.embeddings import disabled_error, encode, parse_request, response
from runners.serve.errors import APIError


@pytest.mark.parametrize(
    ("given", "inputs"),
    [
        ("hello", ["hello"]),
        (["a", "b c"], ["a", "b c"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_every_openai_input_shape_is_one_list_of_inputs(given: object, inputs: list) -> None:
    req = parse_request({"model": "m", "input": given})
    assert req.inputs() == inputs
    assert req.encoding_format == "float"


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": []}, "input", "empty"),
        ({"input": ""}, "input", "empty"),
        ({"input": ["a", ""]}, "input", "input[1] is empty"),
        ({"input": [[1], []]}, "input", "input[1] is empty"),
        ({"input": [True, 2]}, "input", "token ids (integers)"),
        ({"input": {"text": "a"}}, "input", ""),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "a", "dimensions": 3}, "dimensions", "leave dimensions out"),
        ({"input": "a", "model": ""}, "model", ""),
        ({}, "input", "required"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(body: dict, param: str, words: str) -> None:
    with pytest.raises(APIError) as caught:
        parse_request({"model": "m", **body})
    assert caught.value.status == 400
    assert caught.value.param == param
    assert words in caught.value.message


def test_an_unknown_field_is_named() -> None:
    with pytest.raises(APIError) as caught:
        parse_request({"model": "m", "input": "a", "encodingformat": "float"})
    assert caught.value.status == 400 and "'encodingformat'" in caught.value.message


def test_more_inputs_than_openai_allows_are_refused() -> None:
    with pytest.raises(APIError) as caught:
        parse_request({"model": "m", "input": ["a"] * 2049})
    assert caught.value.param == "input" and "at most 2048" in caught.value.message


def test_base64_is_little_endian_float32_of_the_floats() -> None:
    vector = [0.1, -2.5, 3.0e-8, 1.0]
    text = encode(vector, "base64")
    assert isinstance(text, str)
    decoded = np.frombuffer(base64.b64decode(text), dtype=np.float32)
    assert decoded.tolist() == np.asarray(vector, dtype=np.float32).tolist()
    assert encode(vector, "float") == vector


def test_the_response_has_openais_shape() -> None:
    body = response([[1.0, 0.0], [0.0, 1.0]], "float", "dep", 7)
    assert json.loads(json.dumps(body)) == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
        ],
        "model": "dep",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    from openai.types import CreateEmbeddingResponse

    assert CreateEmbeddingResponse.model_validate(body).data[1].embedding == [0.0, 1.0]


def test_disabled_names_the_setting() -> None:
    error = disabled_error()
    assert error.status == 404 and "spec.embeddings.enabled" in error.message
    assert error.body()["error"]["code"] == "embeddings_not_enabled"


BASE = {"name": "dep", "model_version": "dep@1"}


def test_the_config_section_defaults_to_off() -> None:
    config = parse_config(json.dumps({**BASE, "model_dir": "/m"}), "cfg.json")
    assert config.embeddings.enabled is False
    assert config.embeddings.pooling == "mean" and config.embeddings.normalize is True


def test_llama_cpp_needs_an_embedding_model() -> None:
    cfg = {**BASE, "backend": "llama-cpp", "gguf_path": "/m.gguf", "embeddings": {"enabled": True}}
    with pytest.raises(ConfigError, match="embeddings.model_dir: backend 'llama-cpp'"):
        parse_config(json.dumps(cfg), "cfg.json")
    cfg["embeddings"] = {"enabled": True, "model_dir": "/embedder"}
    assert parse_config(json.dumps(cfg), "cfg.json").embeddings.model_dir is not None


def test_a_bad_pooling_is_named() -> None:
    cfg = {**BASE, "model_dir": "/m", "embeddings": {"enabled": True, "pooling": "max"}}
    with pytest.raises(ConfigError, match="embeddings.pooling"):
        parse_config(json.dumps(cfg), "cfg.json")
