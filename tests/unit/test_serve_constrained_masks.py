"""constrained.py's token masks (what both serving backends apply before sampling) against
llguidance's own per-token answer, on a byte-level BPE tokenizer trained on the spot: a batch
with unconstrained rows, matchers at different places in the grammar, a vocabulary that is
not a multiple of 32, strided logits, and the thread-pool and one-CPU paths alike."""

from __future__ import annotations

import ctypes
import random

import numpy as np
import pytest
import torch
from llguidance import LLMatcher, LLTokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from runners.serve import constrained
from tests.tiny import CORPUS

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "qty": {"type": "integer", "minimum": 1, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["a", "bb"]}, "maxItems": 3},
    },
    "required": ["name", "qty", "tags"],
}
EXTRA = 5  # vocabulary entries past the tokenizer's own: never allowed


@pytest.fixture(scope="module")
def prototype() -> LLMatcher:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=330,
            special_tokens=["<unk>", "<|end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    vocab = tokenizer.get_vocab_size() + EXTRA
    assert vocab % 32, "the test wants a partly used last bitmask word"
    grammars = constrained.Grammars(
        lambda: LLTokenizer(
            tokenizer.to_str(), n_vocab=vocab, eos_token=1, slices=LLTokenizer.json_slices()
        )
    )
    return grammars.compile(constrained.json_constraint(SCHEMA, "response_format"))


def allowed(matcher: LLMatcher) -> np.ndarray:
    """llguidance's per-token answer (one byte per token), independent of the bitmask."""
    return np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8) > 0


def walked(prototype: LLMatcher, steps: int, rng: random.Random) -> LLMatcher:
    """A matcher `steps` random allowed tokens into the grammar (fewer if it finishes)."""
    matcher = constrained.start(prototype)
    for _ in range(steps):
        choices = np.flatnonzero(allowed(matcher)).tolist()
        if matcher.is_stopped() or not choices:
            break
        assert not constrained.consume(matcher, rng.choice(choices)) or matcher.is_stopped()
    return matcher


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("parallel", [True, False], ids=["thread-pool", "one-cpu"])
def test_mask_logits_forbids_exactly_what_each_rows_matcher_forbids(
    prototype: LLMatcher, parallel: bool, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constrained, "_parallel", lambda: parallel)
    rng = random.Random(7)
    for _ in range(20):
        matchers = [
            walked(prototype, rng.randint(0, 40), rng) if rng.random() < 0.75 else None
            for _ in range(rng.randint(1, 9))
        ]
        vocab = len(allowed(prototype))
        with torch.inference_mode():  # as the scheduler calls it: the last position's row
            logits = torch.randn(len(matchers), 3, vocab, device=device)
            original = logits[:, -1, :].cpu()
            constrained.mask_logits(torch, logits[:, -1, :], matchers)
            logits = logits.cpu()
            masked = logits[:, -1, :]
        for row, matcher in enumerate(matchers):
            if matcher is None:
                assert torch.equal(masked[row], original[row])
                continue
            ok = torch.from_numpy(allowed(matcher))
            assert not ok[-EXTRA:].any()
            assert torch.equal(masked[row][ok], original[row][ok])
            assert torch.isneginf(masked[row][~ok]).all()
        assert torch.equal(logits[:, :-1, :].isinf(), torch.zeros_like(logits[:, :-1, :]).bool())


def test_mask_row_writes_the_same_mask_into_a_ctypes_row(prototype: LLMatcher) -> None:
    rng = random.Random(3)
    vocab = len(allowed(prototype))
    for steps in (0, 5, 17):
        matcher = walked(prototype, steps, rng)
        values = np.random.default_rng(steps).standard_normal(vocab).astype(np.float32)
        row = (ctypes.c_float * vocab)(*values)
        constrained.mask_row(matcher, row, vocab)
        written = np.ctypeslib.as_array(row)
        ok = allowed(matcher)
        assert np.array_equal(written[ok], values[ok])
        assert np.isneginf(written[~ok]).all()
