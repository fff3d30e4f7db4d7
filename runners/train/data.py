"""Runner `train`, data: chat-templated tokenisation with prompt masking, packing, batches."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    # A packed row: the lengths of the whole examples it holds, in order (None: one example).
    segments: list[int] | None = None

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def to_messages(row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    if fmt == "instruction":
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
    if fmt == "chat":
        return list(row["messages"])
    if fmt == "qa":
        answers = row["answers"]
        return [
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": answers[0] if answers else ""},
        ]
    if fmt == "preference":
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["chosen"]},
        ]
    raise ValueError(f"format '{fmt}' has no conversation; use objective 'cpt' for text")


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)


def sft_example(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> Example:
    """Loss only on assistant turns: every other token's label is IGNORE.

    The conversation is rendered once; each assistant turn is the span of text its message
    adds after its generation prompt. Tokens are labelled by their character offsets, so
    BPE merges across a span's edge cannot shift the mask.
    """
    text = _render(tokenizer, messages, generation=False)
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation=True)
        upto = _render(tokenizer, messages[: index + 1], generation=False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise ValueError(
                "the chat template does not extend its own prefix; cannot mask prompt tokens"
            )
        spans.append((len(prompt), len(upto)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    labels = [
        token if any(begin <= start < end for begin, end in spans) else IGNORE
        for token, (start, _stop) in zip(input_ids, encoded["offset_mapping"], strict=True)
    ]
    return Example(input_ids[:max_len], labels[:max_len])


def text_example(tokenizer: Any, text: str, max_len: int) -> Example:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    ids = ids[:max_len]
    return Example(ids, list(ids))


def build_examples(
    tokenizer: Any, rows: list[dict[str, Any]], fmt: str, objective: str, max_len: int
) -> list[Example]:
    if objective == "cpt":
        if fmt == "text":
            return [text_example(tokenizer, r["text"], max_len) for r in rows]
        texts = [tokenizer.apply_chat_template(to_messages(r, fmt), tokenize=False) for r in rows]
        return [text_example(tokenizer, t, max_len) for t in texts]
    if fmt == "text":
        raise ValueError("objective 'sft' needs instruction or chat rows; use 'cpt' for text")
    if not tokenizer.chat_template:
        raise ValueError("the base model's tokenizer has no chat template; SFT needs one")
    examples = [sft_example(tokenizer, to_messages(r, fmt), max_len) for r in rows]
    return [e for e in examples if e.trained_tokens > 0]


def pack(examples: list[Example], max_len: int) -> list[Example]:
    """Whole examples into rows of at most max_len tokens (first fit, longest first).

    No example is cut or crosses a row, and each keeps its own positions and attention:
    `collate` restarts position_ids at every example, which transformers reads as packed
    sequences (a block-diagonal causal mask on sdpa/eager, varlen on flash attention) when
    the forward has no attention mask and no cache (`use_cache=False`, as the loop calls it). The
    first label of each example is ignored, as it is unpacked (nothing predicts it there).
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids)):
        size = len(examples[i].input_ids)
        for index, left in enumerate(room):
            if size <= left:
                rows[index].append(i)
                room[index] -= size
                break
        else:
            rows.append([i])
            room.append(max_len - size)
    packed = []
    # Rows and the examples in them keep the data's order (examples that fit one per row
    # train exactly as unpacked).
    for members in sorted(sorted(r) for r in rows):
        row = [examples[i] for i in members]
        ids: list[int] = []
        labels: list[int] = []
        for example in row:
            ids += example.input_ids
            labels += [IGNORE, *example.labels[1:]]
        packed.append(Example(ids, labels, [len(e.input_ids) for e in row]))
    return [p for p in packed if p.trained_tokens > 0]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; packed rows get position_ids restarting at each example instead
    of an attention mask (transformers then keeps attention within each example)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    if not any(e.segments for e in examples):
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        lengths = list(example.segments or [len(example.input_ids)])
        if width > sum(lengths):
            lengths.append(width - sum(lengths))  # the padding: a segment of its own
        positions[row] = torch.cat([torch.arange(n) for n in lengths])
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def real_tokens(examples: list[Example]) -> int:
    """Tokens a batch computes that are not padding."""
    return sum(len(e.input_ids) for e in examples)


def micro_batches(
    examples: list[Example], batch_size: int, seed: int, start: int
) -> Iterator[tuple[int, list[Example]]]:
    """(global index, batch) from `start` on; epoch e is shuffled with seed + e.

    The order depends only on the seed, so a resumed run sees exactly the batches the
    uninterrupted run would have seen.
    """
    per_epoch = (len(examples) + batch_size - 1) // batch_size
    index = start
    while True:
        epoch, offset = divmod(index, per_epoch)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(examples), generator=generator).tolist()
        for position in range(offset, per_epoch):
            chunk = order[position * batch_size : (position + 1) * batch_size]
            yield index, [examples[i] for i in chunk]
            index += 1
