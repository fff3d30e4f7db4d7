"""Brain scan end to end on tiny real Llamas: LoRA vs merged deltas, damage alarms, neurons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from runners.errors import InvalidInput
from runners.inspect import ScanInputs, scan
from tests.tiny import make_tiny_llama

PROBE = "The capital of France is Paris."


def _copy_model(src: Path, dest: Path, edit: Any) -> Path:
    """A copy of a model folder with `edit(tensors)` applied to its safetensors."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-layer base, a LoRA adapter on it (q_proj, v_proj), and the adapter merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("inspect")
    base = make_tiny_llama(root / "base", seed=0, hidden=32, layers=6)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    merged = root / "merged"
    peft_model.merge_and_unload().save_pretrained(merged, safe_serialization=True)
    for path in base.iterdir():
        if "token" in path.name or path.name == "chat_template.jinja":
            shutil.copy(path, merged / path.name)
    return {"root": root, "base": base, "adapter": adapter, "merged": merged}


def _errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in result["alarms"] if a["severity"] == "error"]


def test_adapter_deltas_equal_merged_deltas(models: dict[str, Path]) -> None:
    root = models["root"]
    lora = scan(ScanInputs(models["adapter"], root / "scan-adapter", base=models["base"]))
    merged = scan(ScanInputs(models["merged"], root / "scan-merged", base=models["base"]))
    assert lora["kind"] == "adapter" and merged["kind"] == "full"
    assert lora["modules_changed"] == merged["modules_changed"] == ["q_proj", "v_proj"]
    dense = {row["tensor"]: row for row in merged["deltas"]}
    assert len(lora["deltas"]) == 12  # 6 layers x (q_proj, v_proj)
    for row in lora["deltas"]:
        ref = dense[row["tensor"]]
        assert row["svd_method"] == "lowrank-exact" and ref["svd_method"] == "exact"
        for key in ("delta_frobenius", "relative_change", "delta_spectral_norm"):
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), key
        assert row["effective_rank"] == pytest.approx(ref["effective_rank"], rel=1e-4)
        assert row["numerical_rank"] == ref["numerical_rank"] == 4
        assert row["relative_change"] > 0.01
    changed = {r["tensor"] for r in merged["deltas"] if r["delta_frobenius"] > 0}
    assert changed == {row["tensor"] for row in lora["deltas"]}
    # The adapter's effective weights are the merged model's, tensor for tensor.
    merged_norms = {r["tensor"]: r["frobenius"] for r in merged["weights"]}
    for row in lora["weights"]:
        assert row["frobenius"] == pytest.approx(merged_norms[row["tensor"]], rel=1e-6)
    layers = [r["layer"] for r in lora["layers_changed_most"]]
    assert sorted(layers) == list(range(6))
    assert [r["layer"] for r in merged["layers_changed_most"]] == layers
    assert _errors(lora) == [] and _errors(merged) == []
    on_disk = json.loads((root / "scan-adapter" / "scan.json").read_text())
    assert on_disk["deltas"] == lora["deltas"]


def test_one_module_times_50_is_named(models: dict[str, Path]) -> None:
    root = models["root"]
    name = "model.layers.3.mlp.up_proj.weight"

    def damage(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name] * 50

    damaged = _copy_model(models["merged"], root / "damaged", damage)
    for base in (None, models["base"]):
        result = scan(ScanInputs(damaged, root / f"scan-damaged-{base is None}", base=base))
        errors = _errors(result)
        assert [(a["kind"], a["tensor"], a["layer"], a["module"]) for a in errors] == [
            ("norm_outlier", name, 3, "up_proj")
        ], errors
        assert "layer 3 up_proj" in errors[0]["reason"] and errors[0]["hint"]
    # The same fine-tune undamaged, on its own: no error.
    clean = scan(ScanInputs(models["merged"], root / "scan-clean"))
    assert _errors(clean) == []
    assert clean["deltas"] == [] and clean["layers_changed_most"] == []


def test_nan_is_an_error_alarm(models: dict[str, Path]) -> None:
    root = models["root"]
    name = "model.layers.2.self_attn.k_proj.weight"

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors[name][0, 1] = float("nan")

    broken = _copy_model(models["base"], root / "nan", poison)
    result = scan(ScanInputs(broken, root / "scan-nan"))
    nonfinite = [a for a in _errors(result) if a["kind"] == "nonfinite"]
    assert [(a["tensor"], a["layer"], a["module"]) for a in nonfinite] == [(name, 2, "k_proj")]
    json.loads((root / "scan-nan" / "scan.json").read_text())  # strict JSON, no NaN literal


def test_probe_token_drives_the_chosen_neuron(models: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    root = models["root"]
    tokenizer = AutoTokenizer.from_pretrained(models["base"])
    ids = tokenizer(PROBE)["input_ids"]
    token = next(t for t in reversed(ids) if ids.count(t) == 1)
    layer, neuron = 1, 7

    def wire(tensors: dict[str, torch.Tensor]) -> None:
        emb = tensors["model.embed_tokens.weight"]
        emb[:, 0] = 0.0
        emb[token, 0] = 10.0
        for part in ("gate_proj", "up_proj"):
            weight = tensors[f"model.layers.{layer}.mlp.{part}.weight"]
            weight[neuron] = 0.0
            weight[neuron, 0] = 5.0

    wired = _copy_model(models["base"], root / "wired", wire)
    out = root / "scan-wired"
    probes = ["How do I reset my password?", PROBE]
    result = scan(ScanInputs(wired, out, probes=probes, top_k=3))
    acts = result["activations"]
    top = acts["mlp"][layer]["top_neurons"][0]
    assert acts["mlp"][layer]["layer"] == layer
    assert top["neuron"] == neuron
    assert top["tokens"][0]["token_id"] == token and top["tokens"][0]["prompt"] == 1
    assert top["tokens"][0]["token"] == tokenizer.decode([token])
    assert len(acts["mlp"]) == 6 and all(len(m["top_neurons"]) == 3 for m in acts["mlp"])
    assert len(acts["hidden_norms"]) == 2 and len(acts["hidden_norms"][0]) == 7
    assert len(acts["hidden_norms"][1][0]) == len(ids)
    assert all(m["never_active_fraction"] == 0.0 for m in acts["mlp"])
    # The hand-wired rows make those two weights outliers, and the scan says so.
    assert {(a["layer"], a["module"]) for a in _errors(result)} == {
        (layer, "gate_proj"),
        (layer, "up_proj"),
    }
    massive = [a for a in result["alarms"] if a["kind"] == "massive_activation"]
    assert massive and all(a["severity"] == "warning" for a in massive)
    # Every picture exists and is a valid PNG, named in the result and in scan.json.
    from PIL import Image

    expected = {"weight_norms", "weight_histograms", "activation_norms", "top_neurons"}
    assert set(result["images"]) == expected
    for filename in result["images"].values():
        with Image.open(out / filename) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    assert json.loads((out / "scan.json").read_text())["images"] == result["images"]
    grid = result["heatmaps"]["top_neurons"]
    assert grid["cols"][layer][0] == neuron


def test_change_heatmap_png(models: dict[str, Path]) -> None:
    from PIL import Image

    out = models["root"] / "scan-change"
    result = scan(ScanInputs(models["merged"], out, base=models["base"]))
    assert result["images"]["weight_change"] == "weight_change.png"
    with Image.open(out / "weight_change.png") as image:
        image.verify()
    grid = result["heatmaps"]["weight_change"]
    q = grid["cols"].index("q_proj")
    k = grid["cols"].index("k_proj")
    assert all(row[q] > 0 for row in grid["values"]) and all(row[k] == 0 for row in grid["values"])
    assert result["weightwatcher"]["skipped"]


def test_weightwatcher_skipped_with_reason_when_missing(models: dict[str, Path]) -> None:
    pytest.importorskip("torch")
    try:
        import weightwatcher  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        result = scan(ScanInputs(models["base"], models["root"] / "ww", weightwatcher=True))
        assert result["weightwatcher"] == {
            "skipped": "weightwatcher is not installed: pip install weightwatcher"
        }
    else:
        pytest.skip("weightwatcher is installed here: the missing case cannot be shown")


def test_pickles_and_missing_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(InvalidInput, match="pickles are never loaded"):
        scan(ScanInputs(folder, tmp_path / "out"))
    with pytest.raises(InvalidInput, match="does not exist"):
        scan(ScanInputs(tmp_path / "nowhere", tmp_path / "out"))
