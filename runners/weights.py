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
