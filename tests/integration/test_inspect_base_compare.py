"""Brain scan against its base on tiny real Llamas: a massive activation the base already has
is context, a new one is the single alarm; what changed leads (modules, layers, neurons)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runners.inspect import ScanInputs, scan
from tests.tiny import make_tiny_llama, plant_massive_activation

PROBES = ["What does the Team plan cost?", "How do I reset my password?"]
SINK_DIM, NEW_DIM = 3, 11


def _edit(src: Path, dest: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _token(folder: Path, prompt: str, index: int) -> tuple[int, str]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(prompt)["input_ids"]
    return ids[index], tokenizer.decode([ids[index]])


def test_the_base_sink_is_context_and_only_the_new_one_alarms(tmp_path: Path) -> None:
    random = make_tiny_llama(tmp_path / "random", seed=0, hidden=32, layers=6)
    sink_id, sink = _token(random, PROBES[0], 0)  # "What"
    new_id, new = _token(random, PROBES[1], 2)
    assert sink != new

    def fine_tune(t: dict[str, torch.Tensor]) -> None:
        t["model.embed_tokens.weight"][new_id, NEW_DIM] = 60.0
        gen = torch.Generator().manual_seed(1)
        for layer in range(6):
            w = t[f"model.layers.{layer}.self_attn.q_proj.weight"]
            w += 0.02 * w.std() * torch.randn(w.shape, generator=gen)
        w = t["model.layers.2.mlp.up_proj.weight"]  # layer 2 changes most, not alone
        w += 0.02 * w.std() * torch.randn(w.shape, generator=gen)

    base = plant_massive_activation(random, tmp_path / "base", [(sink_id, SINK_DIM)])
    tuned = _edit(base, tmp_path / "tuned", fine_tune)

    alone = scan(ScanInputs(base, tmp_path / "scan-base", probes=PROBES))
    (base_alarm,) = alone["alarms"]  # without a base to compare: the sink, once, all layers
    assert (base_alarm["dim"], base_alarm["token"]) == (SINK_DIM, sink)
    # Layers 0-4: the last hidden state is after the final RMSNorm, which rescales each token.
    assert base_alarm["layers"] == list(range(5))

    out = tmp_path / "scan-tuned"
    result = scan(ScanInputs(tuned, out, base=base, probes=PROBES))
    (found,) = result["alarms"]
    assert found["kind"] == "massive_activation" and found["severity"] == "warning"
    assert (found["dim"], found["token"]) == (NEW_DIM, new)
    assert found["layers"] == list(range(5))  # one alarm for the 5 layers it spans
    assert "new massive activation" in found["reason"] and "layers 0-4" in found["reason"]
    assert f"dim {NEW_DIM}" in found["reason"]
    (context,) = result["context"]
    assert (context["dim"], context["token"]) == (SINK_DIM, sink)
    assert context["reason"].startswith("in the base too")
    # What changed: modules by relative change, layers, and the neurons that moved most.
    changes = result["changes"]
    modules = [m["module"] for m in changes["modules"]]
    assert set(modules) == {"embed_tokens", "q_proj", "up_proj"}
    assert changes["layers"][0]["layer"] == 2  # layer 2 has the up_proj change on top
    neurons = changes["neurons"]
    assert neurons and changes["neurons_note"] is None
    scores = [n["score"] for n in neurons]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(n["tokens"][0]["token"] for n in neurons)
    first = neurons[0]["tokens"][0]
    assert abs(first["tuned"] - first["base"]) == pytest.approx(neurons[0]["max_change"])
    # The activation heatmap: the sink column (norm 60 against ~0.1) does not paint every
    # other cell one colour; on a linear 0..60 scale they would sit within 0.3% of each other.
    grid = result["heatmaps"]["activation_norms"]
    limits = grid["limits"]
    assert limits["log"] and grid["cols"][0] == sink
    span = limits["vmax"] - limits["vmin"]
    places = [
        (math.log10(v) - limits["vmin"]) / span for row in grid["values"][1:-1] for v in row[1:]
    ]
    assert max(places) - min(places) > 0.1, places
    saved = json.loads((out / "scan.json").read_text())
    assert saved["alarms"] == result["alarms"] and saved["context"] == result["context"]
