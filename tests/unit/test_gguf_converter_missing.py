"""GGUF export (runners/quantize) without llama.cpp's converter cached by `make llama-cpp`:
a clear error naming the folder it looked in and the make target, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.quantize import QuantizeError, export_gguf


def test_a_missing_converter_names_the_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(QuantizeError, match=r"make llama-cpp") as raised:
        export_gguf(model, tmp_path / "out" / "model.gguf", "q8_0")
    message = str(raised.value)
    assert str(home / ".cache" / "llmops") in message or "llama-cpp-python" in message
    assert not (tmp_path / "out").exists()
