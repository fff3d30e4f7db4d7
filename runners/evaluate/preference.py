"""Runner `evaluate`, preference tasks: does the model prefer the chosen answer of held-out pairs.

A LoRA adapter is scored by its implicit reward, as DPO defines it: the log-probability ratio
of the policy (adapter on) to its reference (adapter off), chosen minus rejected. A plain model
is scored by its log-likelihood of the chosen answer minus that of the rejected one. Each pair
contributes `preference_accuracy` (1 when the margin is positive) and `logprob_margin`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

PREFERENCE_METRICS = ("preference_accuracy", "logprob_margin")
# A pair's prompt: text, or the conversation before the answer as {role, content} messages.
Prompt = str | list[dict[str, str]]


def _texts(tokenizer: Any, prompt: Prompt, answer: str, chat: bool) -> tuple[str, str]:
    """(prompt text, prompt + answer text) as the model reads them. A prompt given as
    messages is the conversation before the answer; without the chat template its turns
    are joined as `role: text` paragraphs."""
    if isinstance(prompt, list) and not chat:
        prompt = "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\n\n"
    if not chat:
        assert isinstance(prompt, str)
        return prompt, prompt + answer
    user = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    whole = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": answer}], tokenize=False
    )
    return head, whole


def _encode(tokenizer: Any, head: str, whole: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of the whole text and where the answer starts (by character offsets, so a
    BPE merge across the edge never moves it)."""
    encoded = tokenizer(whole, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    start = next(
        (i for i, (begin, _end) in enumerate(encoded["offset_mapping"]) if begin >= len(head)),
        len(ids),
    )
    if len(ids) > max_len:  # keep the answer: cut the prompt from the left
        cut = len(ids) - max_len
        ids, start = ids[cut:], max(start - cut, 1)
    return ids, max(start, 1)


def sequence_logprobs(
    model: Any, sequences: list[tuple[list[int], int]], pad_id: int, batch_size: int
) -> list[float]:
    """Sum of log-probabilities of each sequence's tokens from its answer start on."""
    import torch

    device = next(model.parameters()).device
    out: list[float] = []
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first : first + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        with torch.no_grad():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention.to(device)
            ).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, (ids, start) in enumerate(chunk):
            # logits at position t predict token t + 1: answer tokens start..len-1
            out.append(float(picked[row, start - 1 : len(ids) - 1].sum()))
    return out


def _adapter_off(model: Any) -> Callable[[], AbstractContextManager[Any]] | None:
    """A context that runs the model without its LoRA adapter, or None for a plain model.

    Works on a peft model and on one transformers loaded from an adapter folder alike: every
    LoRA layer is switched off, then on again."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return None

    class _Off:
        def __enter__(self) -> None:
            for layer in layers:
                layer.enable_adapters(False)

        def __exit__(self, *exc: object) -> None:
            for layer in layers:
                layer.enable_adapters(True)

    return _Off


def score_pairs(
    model: Any,
    tokenizer: Any,
    pairs: list[tuple[Prompt, str, str]],
    chat: bool = True,
    batch_size: int = 8,
    max_len: int = 2048,
) -> list[dict[str, float]]:
    """Per (prompt, chosen, rejected): the margin and whether it prefers chosen."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequences = []
    for prompt, chosen, rejected in pairs:
        for answer in (chosen, rejected):
            sequences.append(_encode(tokenizer, *_texts(tokenizer, prompt, answer, chat), max_len))
    was_training = model.training
    model.eval()
    policy = sequence_logprobs(model, sequences, pad, batch_size)
    off = _adapter_off(model)
    reference: list[float] | None = None
    if off is not None:
        with off():
            reference = sequence_logprobs(model, sequences, pad, batch_size)
    if was_training:
        model.train()
    rows = []
    for index in range(len(pairs)):
        chosen, rejected = policy[2 * index], policy[2 * index + 1]
        margin = chosen - rejected
        row = {"chosen_logprob": chosen, "rejected_logprob": rejected}
        if reference is not None:
            ref_chosen, ref_rejected = reference[2 * index], reference[2 * index + 1]
            margin -= ref_chosen - ref_rejected
            row.update(reference_chosen_logprob=ref_chosen, reference_rejected_logprob=ref_rejected)
        row.update(margin=margin, preferred=1.0 if margin > 0 else 0.0)
        rows.append(row)
    return rows
