"""Runner `serve`, log-probabilities: what a backend records per token, and the OpenAI shapes.

Both backends report `log_softmax` of the model's raw logits at each position: the model's own
distribution, before temperature, top_p and min_tokens reshape it for sampling (what OpenAI
returns and vLLM returns by default), so a score does not depend on how the answer was sampled
and equals a plain forward pass over the same tokens. Generated tokens are reported whatever
they are, the end-of-generation token included, so `len(content) == usage.completion_tokens`.
With `echo`, every prompt token is reported too; the first has no logprob, as nothing
predicts it (OpenAI's and vLLM's `null`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openai.types import completion_choice
from openai.types.chat import ChatCompletionTokenLogprob, chat_completion
from openai.types.chat.chat_completion_token_logprob import TopLogprob

from runners.serve.errors import APIError

MAX_TOP = 20  # alternatives per token, at most: OpenAI's chat limit, and vLLM's default


@dataclass(frozen=True)
class Candidate:
    token: int
    text: str
    data: bytes  # the token's bytes: a multi-byte character may span several tokens
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token there, its logprob (None for the first prompt token), and the
    most likely tokens at that position, best first."""

    token: int
    text: str
    data: bytes
    logprob: float | None
    top: tuple[Candidate, ...] = ()


class Piece(str):
    """A streamed piece of text with the logprobs of the tokens generated since the last
    piece: a `str`, so the engine's queue and every reader that only wants text are unchanged."""

    logprobs: tuple[TokenLogprob, ...]

    def __new__(cls, text: str, logprobs: Sequence[TokenLogprob]) -> Piece:
        piece = super().__new__(cls, text)
        piece.logprobs = tuple(logprobs)
        return piece


Spell = Callable[[int], tuple[str, bytes]]


def build(
    tokens: Sequence[int],
    chosen: Sequence[float | None],
    top_ids: Sequence[Sequence[int]],
    top_values: Sequence[Sequence[float]],
    spell: Spell,
) -> list[TokenLogprob]:
    """Entries from plain lists a backend computed (one row per position)."""
    out = []
    for token, logprob, ids, values in zip(tokens, chosen, top_ids, top_values, strict=True):
        text, data = spell(token)
        top = tuple(
            Candidate(alt, *spell(alt), float(value))
            for alt, value in zip(ids, values, strict=True)
        )
        score = None if logprob is None else float(logprob)
        out.append(TokenLogprob(token, text, data, score, top))
    return out


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the character each byte is written as in a vocabulary."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
    return {char: byte for byte, char in chars.items()}


def _uses(decoder: Any, kind: str) -> bool:
    if not isinstance(decoder, dict):
        return False
    return decoder.get("type") == kind or any(_uses(d, kind) for d in decoder.get("decoders", []))


def token_bytes(tokenizer: Any) -> Callable[[int, str], bytes]:
    """A transformers tokenizer's exact bytes for a token id (given its decoded text): a token
    that is part of a multi-byte character decodes to U+FFFD alone, but its bytes are known
    from the vocabulary (byte-level BPE characters, or sentencepiece's <0xNN> byte tokens)."""
    try:
        decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder")
    except (AttributeError, ValueError):  # a slow tokenizer: its decoded text is all we have
        decoder = None
    alphabet = _byte_level_alphabet() if _uses(decoder, "ByteLevel") else {}
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})

    def read(token: int, text: str) -> bytes:
        if decoder is None or token in added:
            return text.encode("utf-8")
        piece = tokenizer.convert_ids_to_tokens(token)
        if not isinstance(piece, str):
            return text.encode("utf-8")
        if alphabet and all(char in alphabet for char in piece):
            return bytes(alphabet[char] for char in piece)
        match = _BYTE_TOKEN.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return text.encode("utf-8")

    return read


# The most bytes of float32 logits one echo prefill may hold: echo keeps every prompt
# position's logits ([rows, width, vocab]), 49152 * 2048 * 4 bytes = 400 MB per SmolLM2 row.
ECHO_LOGITS_BYTES = 1 << 30


def echo_groups(lengths: Sequence[int], vocab: int, rows: int) -> list[list[int]]:
    """Indices of echo prompts (of these token lengths), in order, grouped so that a group's
    left-padded logits stay under ECHO_LOGITS_BYTES (a long prompt alone), at most `rows`."""
    groups: list[list[int]] = []
    width = 0
    for index, length in enumerate(lengths):
        wider = max(width, length)
        fits = groups and (len(groups[-1]) + 1) * wider * vocab * 4 <= ECHO_LOGITS_BYTES
        if fits and len(groups[-1]) < rows:
            groups[-1].append(index)
            width = wider
            continue
        groups.append([index])
        width = length
    return groups


def check_prompt_ids(ids: Sequence[int], vocab_size: int | None) -> None:
    """400 for a token-id prompt with an id the model does not have (an index error later)."""
    if not ids:
        raise APIError(400, "prompt: the token list is empty", param="prompt", code="invalid_value")
    if vocab_size is None:
        return
    for index, token in enumerate(ids):
        if not 0 <= token < vocab_size:
            raise APIError(
                400,
                f"prompt[{index}]: token id {token} is outside this model's vocabulary "
                f"(0 to {vocab_size - 1})",
                param="prompt",
                code="invalid_value",
            )


# -- chat: choices[].logprobs.content ---------------------------------------------------------


def chat_entries(entries: Sequence[TokenLogprob], top: int) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=e.text,
            bytes=list(e.data),
            logprob=e.logprob if e.logprob is not None else 0.0,
            top_logprobs=[
                TopLogprob(token=c.text, bytes=list(c.data), logprob=c.logprob) for c in e.top[:top]
            ],
        )
        for e in entries
    ]


def chat_logprobs(entries: Sequence[TokenLogprob], top: int) -> chat_completion.ChoiceLogprobs:
    return chat_completion.ChoiceLogprobs(content=chat_entries(entries, top))


# -- completions: choices[].logprobs {tokens, token_logprobs, top_logprobs, text_offset} ------


def completion_logprobs(
    entries: Sequence[TokenLogprob], top: int, offset: int
) -> completion_choice.Logprobs:
    """OpenAI's legacy shape; `offset` is where the first entry's text starts in the choice's
    text (0 with echo, else the prompt's length). Each `top_logprobs` dict holds the `top` best
    tokens and the chosen one (OpenAI's up to logprobs+1); the first prompt token's is null."""
    tokens, values, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry.text)
        values.append(entry.logprob)
        offsets.append(offset)
        offset += len(entry.text)
        if entry.logprob is None:
            tops.append(None)
            continue
        alternatives = {c.text: c.logprob for c in entry.top[:top]}
        alternatives.setdefault(entry.text, entry.logprob)
        tops.append(alternatives)
    # openai types token_logprobs as floats; the echoed first token's null is OpenAI's own.
    return completion_choice.Logprobs.model_construct(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
    )


class Streamed:
    """A stream's logprobs: each piece's tokens with the piece, then what no piece carried (the
    end-of-generation token, or text held back by a stop sequence) with the final chunk."""

    def __init__(self, top: int | None, offset: int = 0) -> None:
        self.top = top  # None: the request did not ask for logprobs
        self.sent = 0
        self.offset = offset  # completions' text_offset of the next token

    def piece(self, piece: str) -> list[TokenLogprob] | None:
        if self.top is None:
            return None
        entries = list(piece.logprobs) if isinstance(piece, Piece) else []
        self.sent += len(entries)
        return entries

    def rest(self, generated: Sequence[TokenLogprob] | None) -> list[TokenLogprob] | None:
        if self.top is None or generated is None:
            return None
        entries = list(generated[self.sent :])
        self.sent = len(generated)
        return entries

    def chat(self, entries: list[TokenLogprob] | None) -> chat_completion.ChoiceLogprobs | None:
        return None if entries is None or self.top is None else chat_logprobs(entries, self.top)

    def completion(self, entries: list[TokenLogprob] | None) -> completion_choice.Logprobs | None:
        if entries is None or self.top is None:
            return None
        shaped = completion_logprobs(entries, self.top, self.offset)
        self.offset += sum(len(e.text) for e in entries)
        return shaped
