"""Runner `quantize`, converter process: runs llama.cpp's own `convert_hf_to_gguf.py` (cached by
`make llama-cpp`) as `__main__`, in the process runners/quantize/gguf.py starts.

Usage: python convert.py <llama.cpp folder> <converter arguments...>

The converter runs unchanged, with its own `gguf-py` and `conversion` package ahead of the
installed `gguf`, and two narrow accommodations, both for HF byte-level BPE tokenizers:
- its SentencePiece probe looks for `tokenizer.model` before it imports `sentencepiece` (the
  converter imports first, so a byte-level BPE folder failed without that package, which
  llmops does not need; runners/quantize/gguf.py refuses a `tokenizer.model` without it);
- a pre-tokenizer the converter does not recognise by its checksum (it knows published
  tokenizers only) is named `gpt-2` when tokenizer.json's pre-tokenizer is exactly GPT-2's
  (ByteLevel with its regex), which is the split llama.cpp's `gpt-2` applies; any other
  unrecognised pre-tokenizer still fails as the converter says.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
from pathlib import Path
from typing import Any


def _gpt2_pre_tokenizer(folder: Path) -> bool:
    try:
        saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = saved.get("pre_tokenizer") or {}
    return bool(pre.get("type") == "ByteLevel" and pre.get("use_regex", True))


def main(argv: list[str]) -> None:
    root = Path(argv[0])
    sys.path[:0] = [str(root), str(root / "gguf-py")]
    # the converter's own package, next to the script (after gguf-py, which it imports)
    base = importlib.import_module("conversion.base")

    create = base.TextModel._create_vocab_sentencepiece
    known = base.TextModel.get_vocab_base_pre

    def _create_vocab_sentencepiece(self: Any) -> Any:
        model = Path(self.dir_model) / "tokenizer.model"
        if not model.is_file():  # the converter's own check, before it imports sentencepiece
            raise FileNotFoundError(f"File not found: {model}")
        return create(self)

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(known(self, tokenizer))
        except NotImplementedError:
            if _gpt2_pre_tokenizer(Path(self.dir_model)):
                return "gpt-2"
            raise

    base.TextModel._create_vocab_sentencepiece = _create_vocab_sentencepiece
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    script = root / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
