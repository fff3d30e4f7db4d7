"""The serving runtime's config: strict fields, one-line errors naming the source and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.serve.config import CONFIG_ENV, ConfigError, load_config, parse_config

GOOD = {"name": "support-assistant", "model_version": "support-assistant@2", "model_dir": "/m"}


def error(data: object, source: str = "cfg.json") -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(data if isinstance(data, str) else json.dumps(data), source)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_defaults_match_the_deployment_contract() -> None:
    cfg = parse_config(json.dumps(GOOD), "cfg.json")
    assert (cfg.host, cfg.port, cfg.public_port, cfg.backend) == (
        "127.0.0.1",
        8000,
        None,
        "transformers",
    )
    assert cfg.limits.model_dump() == {
        "max_body_bytes": 1_000_000,
        "max_tokens": 512,
        "timeout_s": 60.0,
        "max_concurrency": 4,
        "max_queue": 16,
        "header_timeout_s": 10.0,
        "read_timeout_s": 30.0,
        "max_pending_connections": 128,
        "feedback_per_s": 1.0,
        "feedback_burst": 30,
    }
    assert (cfg.allowed_hosts, cfg.allowed_origins) == ([], [])
    assert not cfg.collect.enabled and cfg.smoke.prompts == ["Hello!"]
    assert cfg.api_key() is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"limits": {"max_tokenz": 1}}, "cfg.json: limits.max_tokenz: unknown field"),
        ({"name": "Support Assistant"}, "cfg.json: name: String should match pattern"),
        ({"port": 70000}, "port: Input should be less than or equal to 65535"),
        ({"public_port": 8000}, "public_port must differ from port"),
        ({"backend": "vllm"}, "backend: Input should be 'transformers' or 'llama-cpp'"),
        ({"backend": "llama-cpp"}, "backend 'llama-cpp' needs 'gguf_path'"),
        ({"model_dir": None}, "backend 'transformers' needs 'model_dir'"),
        ({"collect": {"enabled": True}}, "collect: 'enabled' needs 'dir'"),
        ({"collect": {"sample_rate": 2}}, "collect.sample_rate: Input should be less than or"),
        ({"smoke": {"prompts": []}}, "smoke.prompts: List should have at least 1 item"),
        ({"api_key_env": "not a var"}, "api_key_env: String should match pattern"),
        ({"limits": {"header_timeout_s": 0}}, "limits.header_timeout_s: Input should be greater"),
        ({"limits": {"read_timeout_s": -1}}, "limits.read_timeout_s: Input should be greater"),
        (
            {"limits": {"max_pending_connections": 0}},
            "limits.max_pending_connections: Input should be greater than or equal to 1",
        ),
        (
            {"limits": {"header_timeout_s": 40}},
            "limits: read_timeout_s (30) covers the headers too, so it must be at least "
            "header_timeout_s (40)",
        ),
    ],
)
def test_each_bad_field_is_named(change: dict, expected: str) -> None:
    assert expected in error({**GOOD, **change})


def test_every_problem_is_on_the_one_line() -> None:
    message = error({**GOOD, "port": "x", "limits": {"max_queue": -1}, "extra": 1})
    assert message.count(";") == 2
    assert "port:" in message and "limits.max_queue:" in message and "extra: unknown" in message


def test_not_json_and_not_an_object() -> None:
    assert error('{"name": ', "x.json") == (
        "x.json: not valid JSON: Expecting value at line 1 column 10"
    )
    assert error("[1]") == "cfg.json: the config must be a JSON object"


def test_from_a_path_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(GOOD))
    assert load_config([str(path)], {}).name == "support-assistant"
    assert load_config([], {CONFIG_ENV: json.dumps(GOOD)}).model_version == "support-assistant@2"
    assert load_config([], {CONFIG_ENV: str(path)}).name == "support-assistant"
    with pytest.raises(ConfigError, match=r"set LLMOPS_SERVE_CONFIG"):
        load_config([], {})
    with pytest.raises(ConfigError, match=r"missing.json: cannot read the config"):
        load_config([str(tmp_path / "missing.json")], {})
    with pytest.raises(ConfigError, match=r"^\$LLMOPS_SERVE_CONFIG: port"):
        load_config([], {CONFIG_ENV: json.dumps({**GOOD, "port": -1})})


def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(json.dumps({**GOOD, "api_key_env": "LLMOPS_SERVE_TEST_KEY"}), "c")
    monkeypatch.delenv("LLMOPS_SERVE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="LLMOPS_SERVE_TEST_KEY is not set"):
        cfg.api_key()
    monkeypatch.setenv("LLMOPS_SERVE_TEST_KEY", "sk-1")
    assert cfg.api_key() == "sk-1"


def test_a_relative_gguf_path_is_inside_model_dir() -> None:
    relative = parse_config(
        json.dumps({**GOOD, "backend": "llama-cpp", "gguf_path": "m.gguf", "model_dir": "/mnt"}),
        "c",
    )
    assert relative.gguf_file() == Path("/mnt/m.gguf")
    absolute = parse_config(
        json.dumps({**GOOD, "backend": "llama-cpp", "gguf_path": "/w/m.gguf", "model_dir": None}),
        "c",
    )
    assert absolute.gguf_file() == Path("/w/m.gguf")
