"""Runner `serve`, transformers backend: one forward pass for rows of different LoRA adapters.

peft's mixed-adapter batches (`adapter_names`) register a hook on every LoRA layer at every
forward pass and, inside each layer, loop over the adapters in the batch, gathering and
scattering each one's rows. For small models and short decode steps that bookkeeping costs
more than the arithmetic. Here each LoRA linear layer keeps its adapters' matrices stacked
(`A` as [adapters, in, rank], `B` as [adapters, rank, out], the scaling folded into `B`,
ranks zero-padded to the largest, slot 0 all zeros for rows without an adapter), peft's own
LoRA path is switched off, and one persistent forward hook per layer adds
`bmm(bmm(x, A[row]), B[row])` for the whole batch: two batched matmuls per layer whatever
the mix of adapters. The stacks are rebuilt (under the scheduler's lock) whenever an adapter
is loaded or dropped.

Only plain LoRA on linear layers qualifies (no DoRA or other variants, no LoRA bias, no
embedding or convolution LoRA); `BatchedLoRA.supports` says so, and the backend keeps
peft's `adapter_names` path for anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class BatchedLoRA:
    """Stacked LoRA weights of every loaded adapter, applied per row by forward hooks."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.slots: dict[str, int] = {}  # peft adapter name -> slot (0 is "no adapter")
        self.rows: torch.Tensor | None = None  # slot of each row of the next forward pass
        self.layers: list[tuple[Any, torch.Tensor, torch.Tensor]] = []
        self.hooks: list[Any] = []
        self.rebuild()

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether every LoRA layer of the peft `model` is plain LoRA on a linear layer."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            if not isinstance(module, LoraLinear) or module.lora_embedding_A:
                return False
            if getattr(module, "lora_variant", None) or any(
                getattr(module, "lora_bias", {}).values()
            ):
                return False
        return True

    def rebuild(self) -> None:
        """Stack the loaded adapters' weights again and (re)install the hooks."""
        from peft.tuners.lora import Linear as LoraLinear

        for hook in self.hooks:
            hook.remove()
        self.hooks, self.layers = [], []
        names = list(self.model.peft_config)
        self.slots = {name: slot for slot, name in enumerate(names, start=1)}
        for module in self.model.modules():
            if not isinstance(module, LoraLinear):
                continue
            a, b = _stacks(module, names)
            self.layers.append((module, a, b))
            self.hooks.append(module.register_forward_hook(self._hook(a, b)))
        # peft's own LoRA computation stays off: the hooks add every row's delta.
        self.model.base_model.disable_adapter_layers()

    def remove(self) -> None:
        """Take the hooks off and give LoRA back to peft's own layers."""
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.layers, self.rows = [], [], None
        self.model.base_model.enable_adapter_layers()

    def select(self, keys: Sequence[str | None]) -> None:
        """The adapter (peft name, None for the base) of each row of the next forward pass."""
        slots = [self.slots.get(key, 0) if key else 0 for key in keys]
        device = self.layers[0][1].device if self.layers else "cpu"
        self.rows = torch.tensor(slots, dtype=torch.long, device=device)

    def _hook(self, a: torch.Tensor, b: torch.Tensor) -> Any:
        def add_lora(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            rows = self.rows
            if rows is None or not bool(rows.any()):
                return output
            x = inputs[0]
            shaped = x.reshape(x.shape[0], -1, x.shape[-1]).to(a.dtype)
            delta = torch.bmm(torch.bmm(shaped, a.index_select(0, rows)), b.index_select(0, rows))
            return output + delta.reshape(output.shape).to(output.dtype)

        return add_lora


def _stacks(module: Any, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """[slots, in, rank] and [slots, rank, out] for one layer; zeros where it lacks an adapter."""
    base = module.get_base_layer()
    dtype, device = base.weight.dtype, base.weight.device
    rank = max((module.r.get(name, 0) for name in names), default=0) or 1
    a = torch.zeros(len(names) + 1, base.in_features, rank, dtype=dtype, device=device)
    b = torch.zeros(len(names) + 1, rank, base.out_features, dtype=dtype, device=device)
    for slot, name in enumerate(names, start=1):
        if name not in module.lora_A:
            continue
        weight_a = module.lora_A[name].weight.detach()  # [r, in]
        weight_b = module.lora_B[name].weight.detach()  # [out, r]
        r = weight_a.shape[0]
        a[slot, :, :r] = weight_a.t().to(dtype)
        b[slot, :r, :] = (weight_b.t() * module.scaling[name]).to(dtype)
    return a, b
