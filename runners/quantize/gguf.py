"""Runner `quantize`, export: a transformers model folder (or adapter, merged in memory) -> a
GGUF file written by llama.cpp's own converter, then quantised by llama.cpp.

`convert_hf_to_gguf.py` ships only in llama.cpp's source tree (not in the llama-cpp-python
wheel nor the `gguf` package); `make llama-cpp` caches it, with its `conversion` package and
`gguf-py`, from the llama-cpp-python sdist it compiles, under
~/.cache/llmops/llama.cpp-<version> (the version of the installed llama-cpp-python, so the file
suits the llama.cpp that loads it). It runs in its own process (runners/quantize/convert.py)
with the minimal environment every process llmops starts gets (runners/deploy/environment.py):
`--outtype f16` or `q8_0` directly; q4_k_m from the f16 file with llama-cpp-python's
`llama_model_quantize`.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from runners.deploy import environment
from runners.errors import InvalidInput
from runners.weights import adapter_base, load_causal_lm, tokenizer_folder

# llama.cpp file types (llama_ftype) per quantisation type a spec may ask for.
QUANT_TYPES = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
# The converter's own --outtype for the types it writes itself; the rest start from f16.
CONVERTER_TYPES = ("f16", "q8_0")
CONVERTER = "convert_hf_to_gguf.py"
CONVERT_TIMEOUT_S = 3600
# Files a tokenizer may need next to a merged adapter's weights (copied from its base).
TOKENIZER_EXTRAS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


class QuantizeError(InvalidInput):
    """The model cannot be exported or quantised; the message says why and what to do."""


def converter_folder() -> Path:
    """llama.cpp's converter as `make llama-cpp` caches it for the installed llama-cpp-python."""
    try:
        installed = version("llama_cpp_python")
    except PackageNotFoundError as err:
        raise QuantizeError(
            "GGUF export needs llama-cpp-python and llama.cpp's converter: run `make llama-cpp`"
        ) from err
    folder = Path.home() / ".cache" / "llmops" / f"llama.cpp-{installed}"
    if not (folder / CONVERTER).is_file() or not (folder / "gguf-py").is_dir():
        raise QuantizeError(
            f"llama.cpp's converter is not in {folder} ({CONVERTER} and gguf-py from the "
            f"llama-cpp-python {installed} sdist): run `make llama-cpp`, which caches it"
        )
    return folder


def _convert(folder: Path, dest: Path, outtype: str, name: str) -> None:
    """Run llama.cpp's converter on a full model folder in its own process."""
    script = Path(__file__).with_name("convert.py")
    command = [
        sys.executable,
        str(script),
        str(converter_folder()),
        str(folder),
        "--outfile",
        str(dest),
        "--outtype",
        outtype,
        "--model-name",
        name,
    ]
    try:
        done = subprocess.run(
            command,
            env=environment.minimal({"PYTHONUNBUFFERED": "1"}),
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise QuantizeError(
            f"llama.cpp's converter did not finish on {folder} in {CONVERT_TIMEOUT_S}s"
        ) from err
    if done.returncode != 0 or not dest.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise QuantizeError(
            f"llama.cpp's converter could not export {folder} to GGUF: {why}; serve this model "
            "with runtime transformers"
        )


def _full_folder(folder: Path, scratch: Path) -> Path:
    """`folder` itself for a full model; an adapter merged into its base in `scratch`."""
    if adapter_base(folder) is None:
        return folder
    import torch

    model = load_causal_lm(folder, merge=True, dtype=torch.float32)
    merged = scratch / "merged"
    model.save_pretrained(str(merged))
    tokenizer = tokenizer_folder(folder)
    for extra in TOKENIZER_EXTRAS:
        if (tokenizer / extra).is_file():
            shutil.copyfile(tokenizer / extra, merged / extra)
    return merged


def export_gguf(folder: Path | str, dest: Path | str, kind: str, name: str = "model") -> Path:
    """Write `folder`'s model as one GGUF file of quantisation `kind` (f16, q8_0, q4_k_m)."""
    if kind not in QUANT_TYPES:
        raise QuantizeError(f"quantize.type '{kind}' is not one of {', '.join(QUANT_TYPES)}")
    source, out = Path(folder), Path(dest)
    tokenizer = tokenizer_folder(source)
    if (tokenizer / "tokenizer.model").is_file() and not _has_sentencepiece():
        raise QuantizeError(
            f"{tokenizer / 'tokenizer.model'}: a SentencePiece tokenizer needs the sentencepiece "
            "package to be exported to GGUF (pip install sentencepiece)"
        )
    converter_folder()  # a missing converter is said before any merging
    out.parent.mkdir(parents=True, exist_ok=True)
    first = out if kind in CONVERTER_TYPES else out.with_suffix(".f16.gguf")
    with tempfile.TemporaryDirectory(prefix="llmops-gguf-", dir=out.parent) as scratch:
        _convert(_full_folder(source, Path(scratch)), first, "f16" if first != out else kind, name)
    if first == out:
        return out
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[kind]
    params.nthread = 0
    status = llama_cpp.llama_model_quantize(
        str(first).encode(), str(out).encode(), llama_cpp.byref(params)
    )
    first.unlink(missing_ok=True)
    if status != 0:
        raise QuantizeError(f"llama.cpp could not quantise {source} to {kind} (status {status})")
    return out


def _has_sentencepiece() -> bool:
    return importlib.util.find_spec("sentencepiece") is not None
