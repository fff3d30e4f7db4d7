"""Quantized export: a registered version -> GGUF f16 / q8_0 with llama.cpp's tooling, gated
against its source (perplexity, greedy next-token agreement), registered with lineage and
served by the llama.cpp backend; a broken or over-quantised artifact fails its named gate."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from runners.deploy.local import free_port, is_serving_process
from runners.quantize import DEFAULT_TEXTS, export_gguf, quality_gate
from tests.apply_repo import API_KEY_ENV, git
from tests.integration.test_apply import llmops
from tests.tiny import make_tiny_llama, model_spec

pytest.importorskip("llama_cpp")
KEY = "sk-test-0123456789"


def test_f16_and_q8_0_pass_the_gate_and_a_broken_artifact_fails_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    from gguf import GGUFReader

    sizes = {}
    for kind in ("f16", "q8_0"):
        path = export_gguf(tiny_model, tmp_path / f"tiny.{kind}.gguf", kind)
        sizes[kind] = path.stat().st_size
        types = {t.tensor_type.name for t in GGUFReader(str(path)).tensors}
        assert ("Q8_0" in types) == (kind == "q8_0"), types
        gate = quality_gate(tiny_model, path, DEFAULT_TEXTS)
        assert gate.passed, gate.failed
        assert abs(gate.perplexity_increase) < 0.01 and gate.token_agreement >= 0.9
    assert sizes["q8_0"] < sizes["f16"]
    # f16 is the same model: llama.cpp's logits match transformers' (q/k rows permuted right).
    exact = quality_gate(tiny_model, tmp_path / "tiny.f16.gguf", DEFAULT_TEXTS)
    assert exact.token_agreement >= 0.98 and abs(exact.perplexity_increase) < 1e-3

    # The rotary base comes from config (transformers 5 keeps it under rope_parameters).
    wide = tmp_path / "wide-rope"
    shutil.copytree(tiny_model, wide)
    config = json.loads((wide / "config.json").read_text())
    config.pop("rope_theta", None)
    config["rope_parameters"] = {"rope_theta": 100.0, "rope_type": "default"}
    (wide / "config.json").write_text(json.dumps(config))
    assert _logit_gap(wide, export_gguf(wide, tmp_path / "wide.gguf", "f16")) < 7e-4

    # Another model's weights in the artifact: the greedy tokens disagree.
    other = make_tiny_llama(tmp_path / "other", seed=7)
    broken = export_gguf(other, tmp_path / "broken.gguf", "f16")
    verdict = quality_gate(tiny_model, broken, DEFAULT_TEXTS)
    assert not verdict.passed and verdict.failed[0].startswith("token-agreement:")
    # q4_k_m moves perplexity a little; a gate allowing no increase at all names perplexity.
    q4 = export_gguf(tiny_model, tmp_path / "tiny.q4_k_m.gguf", "q4_k_m")
    strict = quality_gate(
        tiny_model, q4, DEFAULT_TEXTS, max_perplexity_increase=0.0, min_token_agreement=0.0
    )
    if strict.perplexity_increase > 0:
        assert [f.split(":")[0] for f in strict.failed] == ["perplexity"]


def _logit_gap(folder: Path, gguf: Path) -> float:
    """Largest difference between transformers' and llama.cpp's logits on one long text (the
    tiny model's logits stay under 1; a rotary base of 10000 instead of 100 gives 1.5e-3)."""
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(folder))(" ".join(DEFAULT_TEXTS))["input_ids"]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(str(folder))(torch.tensor([ids])).logits[0]
    llm = llama_cpp.Llama(model_path=str(gguf), logits_all=True, n_ctx=256, verbose=False)
    try:
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
    finally:
        llm.close()
    return float(np.abs(got - ref.numpy()).max())


def test_an_adapter_is_merged_before_export(tmp_path: Path, tiny_model: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapter = get_peft_model(base, config)
    for name, param in adapter.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    adapter.save_pretrained(str(tmp_path / "adapter"))
    folder = tmp_path / "adapter"
    saved = json.loads((folder / "adapter_config.json").read_text())
    saved["base_model_name_or_path"] = str(tiny_model)
    (folder / "adapter_config.json").write_text(json.dumps(saved))

    path = export_gguf(folder, tmp_path / "adapter.f16.gguf", "f16")
    merged = quality_gate(folder, path, DEFAULT_TEXTS)
    assert merged.passed and merged.token_agreement >= 0.98
    mismatch = abs(merged.artifact_perplexity - merged.source_perplexity)
    assert mismatch < 1e-3 * merged.source_perplexity
    # The artifact is the fine-tune, not its base: the base scores the texts differently.
    against_base = quality_gate(tiny_model, path, DEFAULT_TEXTS)
    assert abs(against_base.source_perplexity - merged.source_perplexity) > 10 * mismatch


def _quantized(name: str, kind: str, **gate: float) -> str:
    source: dict = {"type": "quantized", "from": "tiny@1", "quantization": kind}
    if gate:
        source["gate"] = gate
    return model_spec(name, source)


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    root = tmp_path / "repo"
    port = free_port()
    shutil.copytree(tiny_model, root / "models/tiny")
    models = root / "specs/models"
    models.mkdir(parents=True)
    (models / "tiny.yaml").write_text(model_spec("tiny", {"type": "local", "path": "models/tiny"}))
    (models / "tiny-f16.yaml").write_text(_quantized("tiny-f16", "f16"))
    (models / "tiny-q8.yaml").write_text(_quantized("tiny-q8", "q8_0"))
    (root / "specs/deployments").mkdir(parents=True)
    (root / "specs/deployments/quantized.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: quantized}\n"
        f"spec:\n  model: tiny-q8@1\n  runtime: llama-cpp\n  target: local\n  port: {port}\n"
        f"  api_key: {{env: {API_KEY_ENV}}}\n  limits: {{max_tokens: 8, max_concurrency: 2}}\n"
    )
    (root / ".gitignore").write_text(".llmops/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "quantized")
    yield root, port
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def test_apply_registers_quantized_versions_with_lineage_and_serves_one(
    repo: tuple[Path, int],
) -> None:
    import openai

    from controller.workspace import open_registry

    root, port = repo
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    q8_outputs = results["Model/tiny-q8"]["outputs"]
    assert q8_outputs["version"] == "tiny-q8@1"
    # The lock entry carries the lineage and the gate's numbers, not only the registry.
    assert q8_outputs["quantized_from"] == "tiny@1"
    assert set(q8_outputs["metrics"]) == {"perplexity_increase", "token_agreement"}
    assert q8_outputs["metrics"]["token_agreement"] > 0.5
    assert "quantized_from" not in results["Model/tiny"]["outputs"]
    registry = open_registry(root)
    origin = registry.find("tiny@1")
    assert origin is not None
    for name, kind in (("tiny-f16", "f16"), ("tiny-q8", "q8_0")):
        version = registry.find(f"{name}@1")
        assert version is not None and version.quantization == kind
        assert version.lineage is not None and version.lineage.base_version_id == origin.id
        assert version.extra["quantized_from"] == "tiny@1"
        assert version.extra["quality_gate"]["passed"] is True
        assert [f.path for f in version.files] == [f"{name}.{kind}.gguf"]
        assert {m.name for m in version.metrics} >= {"perplexity_increase", "token_agreement"}
    # Applied again, nothing is re-quantised: the registry holds what the specs ask for.
    assert llmops(root, "drift").returncode == 0
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    answer = client.chat.completions.create(
        model="quantized",
        messages=[{"role": "user", "content": "How do I reset my password?"}],
        max_tokens=8,
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    # A gate that no q4_k_m of a random model meets: apply fails naming it, nothing registered.
    (root / "specs/models/tiny-q4.yaml").write_text(
        _quantized("tiny-q4", "q4_k_m", min_token_agreement=1.0, max_perplexity_increase=0.0)
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "q4")
    failed = llmops(root, "apply", "--json")
    assert failed.returncode != 0
    assert "failed gate(s)" in failed.stdout + failed.stderr
    assert "token-agreement" in failed.stdout + failed.stderr
    assert open_registry(root).find("tiny-q4@1") is None


def test_an_unknown_source_version_is_a_diagnostic_on_its_field(tmp_path: Path) -> None:
    from controller.load.desired import load_desired

    models = tmp_path / "specs/models"
    models.mkdir(parents=True)
    (models / "q.yaml").write_text(
        model_spec("q", {"type": "quantized", "from": "nowhere@1", "quantization": "q8_0"})
    )
    loaded = load_desired(tmp_path)
    assert loaded.desired is None
    text = "\n".join(d.render() for d in loaded.diagnostics)
    assert "spec.source.from" in text and "unknown model 'nowhere'" in text
