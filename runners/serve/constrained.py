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
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from llguidance import LLExecutor, LLMatcher, LLTokenizer

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
    """llguidance's view of a Hugging Face fast tokenizer (the transformers backend). Every
    grammar here is a JSON schema, so the vocabulary is pre-sliced for JSON (llguidance's
    json_slices: a mask per step 15 to 25% cheaper than its general slices, measured on the
    tiny model's and SmolLM2's vocabularies)."""

    def make() -> LLTokenizer:
        import llguidance.hf

        eos = sorted(eos_ids) or None
        return llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos, slices=LLTokenizer.json_slices()
        )

    return make


def llama_vocab(vocab: Any, vocab_size: int, eog: list[int]) -> Callable[[], LLTokenizer]:
    """llguidance's view of a llama.cpp vocabulary (the llama.cpp backend), sliced for JSON."""

    def make() -> LLTokenizer:
        import llguidance.llamacpp

        eos = list(eog) or None
        return llguidance.llamacpp.lltokenizer_from_vocab(
            vocab, n_vocab=vocab_size, eos_token=eos, slices=LLTokenizer.json_slices()
        )

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
    matcher are left alone). `logits` is [rows, vocab] float32.

    The constrained rows' masks are computed by llguidance into one bitmask (across CPUs when
    there are several), then applied without a per-token branch: on CPU each row adds a bias
    of 0 or -inf per token, read from a table by the mask's bytes (a masked write, torch's or
    numpy's, costs several times more on a 50k vocabulary whose allowed tokens are scattered);
    elsewhere one masked_fill_ on the device."""
    rows = [(matcher, index) for index, matcher in enumerate(matchers) if matcher is not None]
    if not rows:
        return
    vocab = logits.shape[1]
    bits = _bitmask([(matcher, i) for i, (matcher, _) in enumerate(rows)], vocab)
    if logits.device.type == "cpu":
        array = logits.numpy()  # a view: writes into the tensor
        bias = _bias(bits, vocab)
        for i, (_, index) in enumerate(rows):
            np.add(array[index], bias[i], out=array[index])
        return
    blocked = np.zeros((logits.shape[0], vocab), dtype=np.bool_)
    blocked[[index for _, index in rows]] = np.unpackbits(
        np.invert(bits), axis=1, count=vocab, bitorder="little"
    ).view(np.bool_)
    logits.masked_fill_(torch.from_numpy(blocked).to(logits.device), float("-inf"))


def mask_row(matcher: LLMatcher, row: Any, vocab: int) -> None:
    """The same for one float32 logits row at a ctypes pointer (the llama.cpp backend)."""
    array = np.ctypeslib.as_array(row, shape=(vocab,))
    np.add(array, _bias(_bitmask([(matcher, 0)], vocab), vocab)[0], out=array)


def _bitmask(rows: list[tuple[LLMatcher, int]], vocab: int) -> Any:
    """[len(rows), words] uint8: llguidance's masks, bit k of byte b allowing token 8b + k."""
    words = (vocab + 31) // 32
    bitmask = np.empty((len(rows), words), dtype=np.int32)
    if len(rows) > 1 and _parallel():
        _executor().unsafe_compute_mask_ptr(rows, bitmask.ctypes.data, words * 4, len(rows))
    else:
        start = bitmask.ctypes.data
        for matcher, row in rows:
            matcher.unsafe_compute_mask_ptr(start + row * words * 4, words * 4)
    return bitmask.view(np.uint8)  # little-endian words: bytes low first, bits low first


# _BIAS[byte] is the bias of the 8 tokens one bitmask byte covers: 0 allowed, -inf forbidden
_BIAS = np.array(
    [[0.0 if byte >> bit & 1 else -np.inf for bit in range(8)] for byte in range(256)],
    dtype=np.float32,
)


def _bias(bits: Any, vocab: int) -> Any:
    """[rows, vocab] float32 bias from `_bitmask`'s bytes (np.take: a gather, no branches)."""
    return np.take(_BIAS, bits, axis=0).reshape(bits.shape[0], -1)[:, :vocab]


_EXECUTOR: list[LLExecutor] = []


def _parallel() -> bool:
    """Whether this process may run on more than one CPU (on one, a thread pool only adds
    its hand-offs to llguidance's tens of microseconds a row)."""
    return len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else True


def _executor() -> LLExecutor:
    """llguidance's thread pool (it releases the GIL), made on first use."""
    if not _EXECUTOR:
        _EXECUTOR.append(LLExecutor())
    return _EXECUTOR[0]


def consume(matcher: LLMatcher, token: int) -> bool:
    """Feed the sampled token; True when the row must stop: the JSON is complete (only the
    end of sequence may follow) or the matcher refused the token."""
    if not matcher.consume_token(token):
        return True
    return bool(matcher.is_stopped())
