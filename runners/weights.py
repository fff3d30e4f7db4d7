"""Safe loading of model folders: safetensors only, never pickles, never remote code.

Every runner that hands a folder to transformers passes `SAFE_MODEL` (weights) or
`SAFE_TOKENIZER` to `from_pretrained`: `use_safetensors=True` makes transformers refuse a
folder whose weights are only pickles (`pytorch_model.bin`, `*.pt`), which can run code when
unpickled, and `trust_remote_code=False` refuses a config that asks for the repository's own
Python. `require_safetensors` says the same up front, naming the folder and what to do.
The registry checks each file's sha256 before it hands a folder over
(controller/state/registry/store.py `materialize`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runners.errors import InvalidInput

SAFE_MODEL: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": False}
SAFE_TOKENIZER: dict[str, Any] = {"trust_remote_code": False}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def require_safetensors(folder: Path | str) -> None:
    """InvalidInput when `folder` holds pickled weights and no safetensors file."""
    path = Path(folder)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InvalidInput(
            f"{path}: only pickled weights ({', '.join(pickles[:3])}), which can run code when "
            "loaded; llmops loads safetensors only. Convert them once in a trusted place "
            "(transformers: save_pretrained(..., safe_serialization=True)) and register that"
        )


ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def adapter_base(folder: Path | str) -> Path | None:
    """The base model folder a PEFT adapter folder names; None for a full model folder.

    The registry records an adapter version's base relative to the adapter's own folder
    (`../../<base model>/<number>`, controller/apply/train.py), so the pair loads wherever the
    registry materialises them; an absolute path (a training run's model/) is taken as is.
    """
    path = Path(folder)
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidInput(
            f"{config}: field 'base_model_name_or_path' is missing or unreadable ({err}); save "
            "the adapter with peft's save_pretrained, which records its base model"
        ) from err
    if not isinstance(base, str) or not base:
        raise InvalidInput(f"{config}: field 'base_model_name_or_path' names no base model")
    found = Path(base) if Path(base).is_absolute() else path / base
    if not (found / "config.json").is_file():
        raise InvalidInput(
            f"{config}: its base model {base!r} is not a model folder here ({found}); "
            "materialise the base version first (llmops models pull, or apply), or register "
            "merged weights (training.merge: true)"
        )
    return found


def tokenizer_folder(folder: Path | str) -> Path:
    """Where a model folder's tokenizer is: the folder itself, or an adapter's base."""
    path = Path(folder)
    if any((path / name).is_file() for name in TOKENIZER_FILES):
        return path
    return adapter_base(path) or path


def load_causal_lm(folder: Path | str, merge: bool = False, **kwargs: Any) -> Any:
    """A causal LM from a model folder, or from an adapter folder: its base model with the
    adapter on top (peft), merged in memory when `merge` (faster to run; never written)."""
    from transformers import AutoModelForCausalLM

    # The safety flags are passed apart from kwargs: a caller cannot override them (a clash is
    # a TypeError, not a silent trust_remote_code).
    base = adapter_base(folder)
    if base is None:
        return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs, **SAFE_MODEL)
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs, **SAFE_MODEL)
    adapted = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    return adapted.merge_and_unload() if merge else adapted
