"""Runner `serve`, llama.cpp backend: a GGUF decoded with llama.cpp's batch API, one sequence
per concurrent request (continuous batching), its own chat template.

`llama_cpp.Llama` keeps one KV cache and serves one request at a time, so this backend talks
to llama.cpp one level down (llama-cpp-python's low-level bindings): one context with
`n_seq_max` sequences, each request owning a sequence id while it runs. One scheduler thread
owns the context; each step it prefills newly arrived prompts and feeds every running
sequence its last token in the same `llama_decode` batch, then samples each sequence's next
token from its own logits row with its own sampler chain (greedy, or top-p, temperature and
a seeded distribution). A finished sequence (end of generation, max_tokens, a stop string,
its deadline or its client leaving) has its KV cells removed at once and its id goes back
to the pool, so the next request starts on the following step.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.serve import constrained
from runners.serve.batching import SchedulerThread
from runners.serve.generation import (
    Control,
    Generation,
    Sampling,
    StopScanner,
    finish_reason,
)
from runners.serve.logprobs import Piece, TokenLogprob, build

DEFAULT_CONTEXT = 4096  # tokens per sequence
PREFILL_BATCH = 512  # prompt tokens decoded per llama_decode call
GOMP_SPINCOUNT = 1000  # OpenMP barrier spins before a thread sleeps (see __init__)


class LlamaCppError(RuntimeError):
    """llama.cpp refused a batch; the message says what to change."""


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    sampling: Sampling
    emit: Callable[[str], None]
    control: Control
    scanner: StopScanner = field(init=False)
    seq: int = -1  # llama.cpp sequence id while running
    sampler: Any = None
    generated: int = 0
    position: int = 0  # position of the next token fed to the model
    last: int = -1  # the token to feed next
    pieces: list[str] = field(default_factory=list)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of generated tokens
    prompt_logprobs: list[TokenLogprob] | None = None  # of prompt tokens, with echo
    matcher: Any = None  # llguidance matcher when the answer is constrained (constrained.py)
    streamed: int = 0  # logprobs already sent with a piece
    result: Generation | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.scanner = StopScanner(self.sampling.stop)

    def show(self, text: str) -> None:
        if text:
            self.pieces.append(text)
            if self.sampling.logprobs is not None:
                text = Piece(text, self.logprobs[self.streamed :])
                self.streamed = len(self.logprobs)
            self.emit(text)


class LlamaCppBackend:
    kind = "llama-cpp"

    def __init__(self, gguf_path: Path, sequences: int = 4, n_ctx: int = DEFAULT_CONTEXT) -> None:
        # llama.cpp's CPU threads are GNU OpenMP's (the build `make llama-cpp` makes): at each
        # op's barrier they spin 300k rounds before sleeping, which on a CPU shared with other
        # processes burns the time slice the other thread needs (a SmolLM2 prompt with 2
        # threads on 2 cores at load 20: 15-33 s; 0.3-1.3 s spinning 1000 rounds, the count
        # libgomp itself takes when it sees more threads than CPUs). Read when libgomp loads,
        # with llama_cpp: a process that imported it before keeps what it had.
        os.environ.setdefault("GOMP_SPINCOUNT", str(GOMP_SPINCOUNT))
        try:
            import llama_cpp
            import numpy  # llama-cpp-python's own dependency: logprobs are computed with it
            from llama_cpp import _internals
            from llama_cpp._logger import set_verbose
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as err:
            raise ValueError(
                "backend 'llama-cpp' needs llama-cpp-python, which is not importable here "
                f"({err}); install the 'llama-cpp' extra or use backend 'transformers'"
            ) from None
        if not gguf_path.is_file():
            raise ValueError(f"GGUF file {gguf_path} does not exist")
        self.lib = llama_cpp
        self.np = numpy
        set_verbose(False)  # llama.cpp's load and graph logs: errors only
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.model = _internals.LlamaModel(
            path_model=str(gguf_path), params=model_params, verbose=False
        )
        self.sequences = max(1, sequences)
        per_sequence = min(n_ctx, self.model.n_ctx_train())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = per_sequence * self.sequences
        params.n_batch = max(PREFILL_BATCH, self.sequences)
        params.n_ubatch = params.n_batch
        params.n_seq_max = self.sequences
        # As llama-cpp-python's Llama does by default: its answers and ours then agree.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        # llama.cpp computes a one-token batch (one client decoding) with n_threads and any
        # larger batch (prompts, several clients) with n_threads_batch. One token is a chain of
        # small memory-bound ops, each ending in a barrier where ggml's threads spin: half the
        # CPUs there (llama-cpp-python's own default), all of them for batches. With every CPU
        # on one token, a shared machine stalled each step (SmolLM2 q8_0, 2 cores at load 20:
        # 8 tokens in over 90 s with 2 threads, 2.7 s with 1).
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        params.n_threads = max(1, cpus // 2)
        params.n_threads_batch = max(1, cpus)
        self.context = _internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.context_length: int | None = per_sequence
        self.vocab = llama_cpp.llama_model_get_vocab(self.model.model)
        self.n_vocab = self.model.n_vocab()
        self.vocab_size: int | None = self.n_vocab
        metadata = self.model.metadata()
        template = metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{gguf_path.name} has no chat template in its metadata")

        def text(token: int) -> str:
            return self.model.token_get_text(token) if token != -1 else ""

        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=text(self.model.token_eos()),
            bos_token=text(self.model.token_bos()),
        )
        self.pieces: dict[int, bytes] = {}
        self.eog = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self.chat_template: str = template
        # The same llguidance compiler as the transformers backend (not llama.cpp's GBNF
        # sampler, which checks every candidate token each step): one schema coverage, the
        # same 400s and the same compact JSON on both backends.
        self.grammars = constrained.Grammars(
            constrained.llama_vocab(self.vocab, self.n_vocab, self.eog)
        )
        self.scheduler = _Scheduler(self)

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return str(self.formatter(messages=messages, tools=tools).prompt)  # type: ignore[arg-type]

    def compile_constraint(self, constraint: constrained.Constraint) -> Any:
        """A compiled grammar for Sampling.constraint; APIError 400 when the schema is unusable."""
        return self.grammars.compile(constraint)

    def _tokens(self, prompt: str, chat: bool) -> list[int]:
        # A chat template writes its own BOS; a raw completion prompt gets the model's.
        return list(self.model.tokenize(prompt.encode("utf-8"), add_bos=not chat, special=True))

    def count_tokens(self, prompt: str, chat: bool) -> int:
        return len(self._tokens(prompt, chat))

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.piece(token) for token in ids).decode("utf-8", errors="replace")

    def spell(self, token: int) -> tuple[str, bytes]:
        data = self.piece(token)
        return data.decode("utf-8", errors="replace"), data

    def scores(self, index: int) -> Any:
        """log_softmax of batch row `index`'s raw logits (llama-cpp-python's own), a copy."""
        pointer = self.lib.llama_get_logits_ith(self.context.ctx, index)
        return self.lib.Llama.logits_to_logprobs(
            self.np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        )

    def logprob(self, scores: Any, token: int, top: int) -> TokenLogprob:
        """`token`'s entry under `scores`, with the `top` most likely tokens."""
        np = self.np
        if 0 < top < self.n_vocab:
            best = np.argpartition(-scores, top)[:top]
        else:
            best = np.arange(min(top, self.n_vocab))
        best = best[np.argsort(-scores[best], kind="stable")]
        return build(
            [token], [float(scores[token])], [best.tolist()], [scores[best].tolist()], self.spell
        )[0]

    def generate(
        self,
        prompt: str | list[int],
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation:
        if isinstance(prompt, list):
            tokens = list(prompt)
        else:
            tokens = self._tokens(prompt, chat) or [self.model.token_bos()]
        if self.context_length is not None and len(tokens) >= self.context_length:
            raise ValueError(
                f"the prompt is {len(tokens)} tokens; this model's context per request is "
                f"{self.context_length}: send a shorter prompt"
            )
        request = _Request(tokens, sampling, emit, control)
        if sampling.constraint is not None:
            request.matcher = constrained.start(sampling.constraint)
        self.scheduler.submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        control.raise_if_stopped(request.generated)
        assert request.result is not None
        return request.result

    def close(self) -> None:
        self.scheduler.close()

    # -- sampling ------------------------------------------------------------------------

    def sampler(self, sampling: Sampling) -> Any:
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if sampling.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if sampling.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else lib.LLAMA_DEFAULT_SEED
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def piece(self, token: int) -> bytes:
        """The token's bytes (a multi-byte character may span several tokens)."""
        cached = self.pieces.get(token)
        if cached is None:
            size = 64
            buffer = ctypes.create_string_buffer(size)
            n = self.lib.llama_token_to_piece(self.vocab, token, buffer, size, 0, False)
            if n < 0:  # longer than the buffer: llama.cpp says how long
                buffer = ctypes.create_string_buffer(-n)
                n = self.lib.llama_token_to_piece(self.vocab, token, buffer, -n, 0, False)
            cached = self.pieces[token] = buffer.raw[:n]
        return cached


class _Scheduler(SchedulerThread[_Request]):
    """The thread that owns the llama.cpp context and steps every running sequence together."""

    thread_name = "llama-batcher"

    def __init__(self, backend: LlamaCppBackend) -> None:
        super().__init__()
        self.backend = backend
        self.lib = backend.lib
        self.free = list(range(backend.sequences))
        self.batch = self.lib.llama_batch_init(max(PREFILL_BATCH, backend.sequences), 0, 1)
        self.memory = self.lib.llama_get_memory(backend.context.ctx)

    def _run(self) -> None:
        while True:
            with self.condition:
                while not (self.inbox and self.free) and not self.active and not self.closed:
                    self.condition.wait()
                if self.closed and not self.inbox and not self.active:
                    return
                arrived = []
                while self.inbox and len(arrived) < len(self.free):
                    arrived.append(self.inbox.popleft())
            try:
                self._prefill(arrived)
                self._finish_each([r for r in self.active if r.control.should_stop()])
                if self.active:
                    self._step()
            except BaseException as error:  # a failed decode fails its batch, not the server
                for request in [*arrived, *self.active]:
                    if not request.done.is_set():
                        request.error = error
                        self._release(request)
                        request.done.set()
                self.active = []

    # -- batches -------------------------------------------------------------------------

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """rows: (token, position, sequence, wants logits)."""
        batch = self.batch
        batch.n_tokens = len(rows)
        for i, (token, position, seq, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        self._fill(rows)
        code = self.lib.llama_decode(self.backend.context.ctx, self.batch)
        if code != 0:
            raise LlamaCppError(
                f"llama.cpp could not decode a batch of {len(rows)} token(s) (code {code}); "
                "the context is full: lower max_concurrency or the prompt and answer lengths"
            )

    def _prefill(self, arrived: list[_Request]) -> None:
        """Prompts in as few decode calls as fit; each one's first token sampled."""
        starting = []
        for request in arrived:
            if request.control.should_stop():
                self._finish(request)
                continue
            request.seq = self.free.pop(0)
            request.sampler = self.backend.sampler(request.sampling)
            starting.append(request)
        rows: list[tuple[int, int, int, bool]] = []
        # (request, position) for each row whose logits are read: the last prompt token's,
        # and with echo every one (position i's logits score token i + 1)
        owners: list[tuple[_Request, int] | None] = []
        for request in starting:
            last = len(request.tokens) - 1
            echo = request.sampling.echo
            if echo:
                request.prompt_logprobs = build(
                    request.tokens[:1], [None], [[]], [[]], self.backend.spell
                )
            for position, token in enumerate(request.tokens):
                wanted = position == last or echo
                rows.append((token, position, request.seq, wanted))
                owners.append((request, position) if wanted else None)
            request.position = len(request.tokens)
        sampled: list[tuple[_Request, int, TokenLogprob | None]] = []
        for start in range(0, len(rows), PREFILL_BATCH):
            chunk = rows[start : start + PREFILL_BATCH]
            self._decode(chunk)
            for index, owner in enumerate(owners[start : start + PREFILL_BATCH]):
                if owner is None:
                    continue
                request, position = owner
                if position + 1 < len(request.tokens):
                    assert request.prompt_logprobs is not None
                    request.prompt_logprobs.append(
                        self.backend.logprob(
                            self.backend.scores(index),
                            request.tokens[position + 1],
                            request.sampling.logprobs or 0,
                        )
                    )
                else:
                    sampled.append((request, *self._sample(request, index)))
        for request, token, scored in sampled:
            self.active.append(request)
            if request.sampling.max_tokens == 0 or self._take(request, token, scored):
                self._finish_each([request])
        self.max_batch_seen = max(self.max_batch_seen, len(self.active))

    def _step(self) -> None:
        running = list(self.active)
        self._decode([(r.last, r.position, r.seq, True) for r in running])
        self.steps += 1
        tokens = [self._sample(request, index) for index, request in enumerate(running)]
        finished = []
        for request, (token, scored) in zip(running, tokens, strict=True):
            request.position += 1
            if self._take(request, token, scored):
                finished.append(request)
        self._finish_each(finished)

    # -- tokens --------------------------------------------------------------------------

    def _sample(self, request: _Request, index: int) -> tuple[int, TokenLogprob | None]:
        """The next token, and its logprob entry when asked (read from the logits before
        min_tokens masks them and the sampler chain reshapes them)."""
        lib, backend = self.lib, self.backend
        ctx = backend.context.ctx
        top = request.sampling.logprobs
        scores = backend.scores(index) if top is not None else None
        if request.generated < request.sampling.min_tokens and backend.eog:
            logits = lib.llama_get_logits_ith(ctx, index)
            row = ctypes.cast(logits, ctypes.POINTER(ctypes.c_float))
            for token in backend.eog:
                row[token] = -float("inf")
        if request.matcher is not None:  # the sampler chain reads the masked row
            row = ctypes.cast(lib.llama_get_logits_ith(ctx, index), ctypes.POINTER(ctypes.c_float))
            constrained.mask_row(request.matcher, row, backend.n_vocab)
        token = int(lib.llama_sampler_sample(request.sampler, ctx, index))
        if scores is None or top is None:
            return token, None
        return token, backend.logprob(scores, token, top)

    def _take(self, request: _Request, token: int, scored: TokenLogprob | None) -> bool:
        """Record the token's logprob when asked, then accept it; True when finished."""
        if scored is not None:
            request.logprobs.append(scored)
        return self._accept(request, token)

    def _accept(self, request: _Request, token: int) -> bool:
        """Take one generated token; True when the request is finished."""
        request.generated += 1
        if self.lib.llama_vocab_is_eog(self.backend.vocab, token):
            return True
        request.last = token
        text = request.decoder.decode(self.backend.piece(token))
        request.show(request.scanner.feed(text))
        if request.matcher is not None and constrained.consume(request.matcher, token):
            return True  # the JSON is complete
        if request.scanner.stopped or request.generated >= request.sampling.max_tokens:
            return True
        limit = self.backend.context_length
        if limit is not None and request.position + 1 >= limit:
            return True
        return request.control.should_stop()

    def _finish_each(self, finished: list[_Request]) -> None:
        for request in finished:
            self._finish(request)
        gone = set(map(id, finished))
        self.active = [r for r in self.active if id(r) not in gone]

    def _release(self, request: _Request) -> None:
        if request.seq >= 0:
            self.lib.llama_memory_seq_rm(self.memory, request.seq, -1, -1)
            self.free.append(request.seq)
            request.seq = -1
        if request.sampler is not None:
            self.lib.llama_sampler_free(request.sampler)
            request.sampler = None

    def _finish(self, request: _Request) -> None:
        self._release(request)
        if request.done.is_set():
            return
        scanner = request.scanner
        if not request.control.cancelled.is_set() and not scanner.stopped:
            request.show(scanner.feed(request.decoder.decode(b"", final=True)))
        request.show(scanner.flush())
        request.result = Generation(
            text="".join(request.pieces),
            prompt_tokens=len(request.tokens),
            completion_tokens=request.generated,
            finish_reason=finish_reason(scanner, request.generated, request.sampling.max_tokens),
            logprobs=request.logprobs if request.sampling.logprobs is not None else None,
            prompt_logprobs=request.prompt_logprobs,
        )
        request.done.set()
