"""Token-shaped strings are recognised; ordinary values and digests are not."""

from __future__ import annotations

import pytest

from controller.load.secrets import find_secret


@pytest.mark.parametrize(
    ("value", "label"),
    [
        ("hf_" + "AbCdEfGhIj" * 3 + "kl", "Hugging Face token"),
        ("sk-proj-" + "x1" * 20, "OpenAI API key"),
        ("ghp_" + "a" * 36, "GitHub token"),
        ("AKIA" + "ABCDEFGHIJKLMNOP", "AWS access key id"),
        ("-----BEGIN RSA PRIVATE KEY-----", "private key"),
        ("postgresql://app:s3cret@db:5432/reg", "password in a URL"),
    ],
)
def test_token_shapes(value: str, label: str) -> None:
    assert find_secret(value) == label


@pytest.mark.parametrize(
    "value",
    [
        "a" * 40,
        "sha256:" + "0" * 64,
        "support-assistant@champion",
        "Settings > Security",
        "https://orbitask.example/docs",
        "0 3 * * 1",
    ],
)
def test_ordinary_values(value: str) -> None:
    assert find_secret(value) is None


def test_secret_named_field_with_literal_value() -> None:
    assert find_secret("correct-horse-battery", "password") == "value of 'password'"
    assert find_secret("short", "password") is None
