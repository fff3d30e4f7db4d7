"""runners/weights.py `adapter_base`: where an adapter folder's base model is, and a clear
error naming the file and what to do when it cannot be found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.errors import InvalidInput
from runners.weights import adapter_base, tokenizer_folder


def _adapter(folder: Path, base: object) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def _model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_a_full_model_has_no_base(tmp_path: Path) -> None:
    assert adapter_base(_model(tmp_path / "m")) is None


def test_a_relative_base_is_taken_from_the_adapters_folder(tmp_path: Path) -> None:
    base = _model(tmp_path / "views/tiny/1")
    adapter = _adapter(tmp_path / "views/assistant/1", "../../tiny/1")
    found = adapter_base(adapter)
    assert found is not None and found.resolve() == base.resolve()
    assert tokenizer_folder(adapter).resolve() == base.resolve()  # the adapter has none


def test_an_absolute_base_is_taken_as_is(tmp_path: Path) -> None:
    base = _model(tmp_path / "base")
    assert adapter_base(_adapter(tmp_path / "a", str(base))) == base


def test_a_missing_base_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "views/assistant/1", "../../tiny/1")
    with pytest.raises(InvalidInput, match=r"adapter_config.json: its base model '../../tiny/1'"):
        adapter_base(adapter)
    with pytest.raises(InvalidInput, match="training.merge: true"):
        adapter_base(adapter)


@pytest.mark.parametrize("base", [None, "", 3])
def test_a_config_without_a_base_is_refused(tmp_path: Path, base: object) -> None:
    with pytest.raises(InvalidInput, match="base_model_name_or_path"):
        adapter_base(_adapter(tmp_path / "a", base))
