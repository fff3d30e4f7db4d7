"""Runner `serve`, constrained decoding: JSON schemas compiled by llguidance into token masks
that either backend applies to each constrained row of its batch before sampling.

A request's `Constraint` (a JSON schema and the request field it came from) is compiled once
per schema: `Grammars` keeps an LRU of compiled llguidance matchers keyed by the schema's
canonical JSON, and each request decodes with its own copy (`deep_copy` is microseconds, a
compile is a grammar build). At every step the scheduler asks each constrained row's matcher
for the tokens allowed next, sets the others' logits to -inf, samples as usual, and feeds the
sampled token back; the row finishes when its matcher says the JSON is complete.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from llguidance import LLMatcher, LLTokenizer

from runners.serve.errors import APIError

CACHE_SIZE = 256  # compiled schemas kept per backend
# Compact JSON, as OpenAI's structured outputs answer: no whitespace between tokens, so a
# model cannot pad an answer with blank lines until max_tokens runs out.
COMPILE_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


@dataclass(frozen=True)
class Constraint:
    """What a request's answer must be, before any backend compiles it: JSON valid against
    `schema`. `param` is the request field the schema came from, named in a 400."""

    schema: dict[str, Any]
    param: str
    key: str  # canonical JSON of the schema: the cache key


def json_constraint(schema: Any, param: str) -> Constraint:
    if not isinstance(schema, dict):
        raise APIError(
            400,
            f"{param}: a JSON schema must be an object, got {type(schema).__name__}",
            param=param,
            code="invalid_schema",
        )
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Constraint(schema, param, key)


def invalid_schema(param: str, reason: str) -> APIError:
    first = reason.strip().splitlines()[0] if reason.strip() else "not a usable JSON schema"
    return APIError(
        400,
        f"{param}: invalid or unsupported JSON schema: {first}",
        param=param,
        code="invalid_schema",
    )


def hf_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: set[int]) -> Callable[[], LLTokenizer]:
    """llguidance's view of a Hugging Face fast tokenizer (the transformers backend)."""

    def make() -> LLTokenizer:
        import llguidance.hf

        eos = sorted(eos_ids) or None
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)

    return make


def llama_vocab(vocab: Any, vocab_size: int, eog: list[int]) -> Callable[[], LLTokenizer]:
    """llguidance's view of a llama.cpp vocabulary (the llama.cpp backend)."""

    def make() -> LLTokenizer:
        import llguidance.llamacpp

        eos = list(eog) or None
        return llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=vocab_size, eos_token=eos)

    return make


class Grammars:
    """Compiled matchers for one tokenizer, by schema, least recently used dropped first."""

    def __init__(self, make_tokenizer: Callable[[], LLTokenizer]) -> None:
        self.make_tokenizer = make_tokenizer
        self.lock = threading.Lock()
        self.cache: OrderedDict[str, LLMatcher] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self._tokenizer: LLTokenizer | None = None

    def tokenizer(self) -> LLTokenizer:
        # Built on first use (about a second for a 50k vocabulary), not at load: a deployment
        # that never receives a schema never pays for it.
        with self.lock:
            if self._tokenizer is None:
                self._tokenizer = self.make_tokenizer()
            return self._tokenizer

    def compile(self, constraint: Constraint) -> LLMatcher:
        """The matcher prototype for this schema (copy it per request); 400 if it is unusable."""
        with self.lock:
            cached = self.cache.get(constraint.key)
            if cached is not None:
                self.cache.move_to_end(constraint.key)
                self.hits += 1
                return cached
        try:
            grammar = LLMatcher.grammar_from_json_schema(
                closed(constraint.schema), overrides=COMPILE_OPTIONS
            )
        except (ValueError, TypeError) as err:
            raise invalid_schema(constraint.param, str(err)) from None
        matcher = LLMatcher(self.tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise invalid_schema(constraint.param, matcher.get_error())
        with self.lock:
            self.misses += 1
            self.cache[constraint.key] = matcher
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        return matcher


_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object schema that lists
    `properties` and says nothing about other properties, as vLLM's xgrammar does in its
    default strict mode: JSON Schema allows any extra property there, and a model that takes
    the offer can write keys until max_tokens (pydantic's schemas leave it unsaid). An object
    with no `properties` (json_object) stays open."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed(sub) for sub in out[key]]
    for key in _SCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if "properties" in out and not any(key in out for key in open_keys):
        out["additionalProperties"] = False
    return out


def start(prototype: LLMatcher) -> LLMatcher:
    """A request's own matcher, at the start of the grammar."""
    return prototype.deep_copy()


def mask_logits(torch: Any, logits: Any, matchers: list[LLMatcher | None]) -> None:
    """Set to -inf, in place, every token a row's matcher does not allow next (rows without a
    matcher are left alone). `logits` is [rows, vocab]."""
    rows = [(row, matcher) for row, matcher in enumerate(matchers) if matcher is not None]
    if not rows:
        return
    vocab = logits.shape[1]
    words = (vocab + 31) // 32
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    for index, (_, matcher) in enumerate(rows):
        view = bitmask[index]
        matcher.unsafe_compute_mask_ptr(view.data_ptr(), words * 4)
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(len(rows), -1)[:, :vocab].bool()
    index = torch.tensor([row for row, _ in rows], device=logits.device)
    picked = logits.index_select(0, index)
    picked.masked_fill_(~allowed.to(logits.device), float("-inf"))
    logits.index_copy_(0, index, picked)


def mask_row(matcher: LLMatcher, row: Any, vocab: int) -> None:
    """The same for one float32 logits row at a ctypes pointer (the llama.cpp backend)."""
    words = (vocab + 31) // 32
    bitmask = np.empty(words, dtype=np.int32)
    matcher.unsafe_compute_mask_ptr(bitmask.ctypes.data, words * 4)
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:vocab].astype(bool)
    logits = np.ctypeslib.as_array(row, shape=(vocab,))
    logits[~allowed] = -np.inf


def consume(matcher: LLMatcher, token: int) -> bool:
    """Feed the sampled token; True when the row must stop: the JSON is complete (only the
    end of sequence may follow) or the matcher refused the token."""
    if not matcher.consume_token(token):
        return True
    return bool(matcher.is_stopped())
