"""Stacked-weight LoRA batches (runners/serve/lora_batch.py) against peft's own adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from runners.serve.lora_batch import BatchedLoRA
from tests.tiny import make_random_adapter, make_tiny_llama


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("lora-batch")
    base = make_tiny_llama(root / "base")
    # Different ranks, so the stacks must pad the smaller one.
    return (
        base,
        make_random_adapter(base, root / "a", seed=1, rank=4),
        make_random_adapter(base, root / "b", seed=2, rank=8),
    )


def _logits_alone(base: Path, adapter: Path | None, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_each_row_gets_its_own_adapter(adapters: tuple[Path, Path, Path]) -> None:
    base, first, second = adapters
    model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    model = PeftModel.from_pretrained(model, str(first), adapter_name="a").eval()
    model.load_adapter(str(second), adapter_name="b", is_trainable=False)
    assert BatchedLoRA.supports(model)
    batched = BatchedLoRA(model)

    ids = torch.randint(3, 200, (1, 7), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([ids, ids, ids, ids])
    batched.select(["b", None, "a", "b"])
    with torch.no_grad():
        logits = model(input_ids=rows).logits
    batched.rows = None

    expected = {
        "a": _logits_alone(base, first, ids)[0],
        "b": _logits_alone(base, second, ids)[0],
        None: _logits_alone(base, None, ids)[0],
    }
    for row, key in enumerate(["b", None, "a", "b"]):
        torch.testing.assert_close(logits[row], expected[key], atol=1e-5, rtol=1e-5)
    # The adapters really differ, so a row given the wrong one would have failed above.
    assert (expected["a"] - expected["b"]).abs().max() > 1e-2
    assert (expected["a"] - expected[None]).abs().max() > 1e-2

    # With no rows selected the model is the base alone (peft's own LoRA path is off).
    with torch.no_grad():
        plain = model(input_ids=ids).logits[0]
    torch.testing.assert_close(plain, expected[None], atol=1e-5, rtol=1e-5)

    # Dropping an adapter and restacking keeps the other one right.
    model.delete_adapter("a")
    batched.rebuild()
    batched.select(["b"])
    with torch.no_grad():
        only_b = model(input_ids=ids).logits[0]
    torch.testing.assert_close(only_b, expected["b"], atol=1e-5, rtol=1e-5)

    batched.remove()
    model.set_adapter("b")
    with torch.no_grad():
        peft_again = model(input_ids=ids).logits[0]
    torch.testing.assert_close(peft_again, expected["b"], atol=1e-5, rtol=1e-5)


def test_dora_is_left_to_peft(adapters: tuple[Path, Path, Path]) -> None:
    from peft import LoraConfig, get_peft_model

    base, _, _ = adapters
    model = AutoModelForCausalLM.from_pretrained(str(base))
    dora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert not BatchedLoRA.supports(dora)
