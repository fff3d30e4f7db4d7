"""Runner `serve`, transformers backend: continuous batching over one model, streamed.

Concurrent requests share forward passes. One scheduler thread owns the model; each
request's worker thread (admission.py) hands it the prompt and waits. At every step the
scheduler prefills newly arrived requests together (left-padded, up to PREFILL_ROWS per
forward pass, so a burst reads the weights once rather than once per prompt), merges them
into the running batch, and runs one decode step for every active sequence: a
left-padded batch with a 2D attention mask, per-sequence position ids, and one batched KV
cache (per layer `[batch, kv_heads, length, head_dim]`). A sequence that finishes (EOS,
max_tokens, a stop string, its deadline, or its client leaving) leaves the batch at once
(its rows are dropped and all-padding columns trimmed), so its admission slot is free for
the next request. Sampling (temperature, top_p, seed, min_tokens) is per request, and so is
constrained decoding: a row with a JSON schema has its logits masked by its own llguidance
matcher before sampling (constrained.py), the rows beside it untouched.

Several LoRA adapters on the one base (config.adapters): the base is wrapped in a peft
PeftModel holding every adapter by its served name, and each forward pass names the adapter
of each row (peft's mixed-adapter batches, `adapter_names`; BASE_ROW for the base), so
requests for different adapters share the batch and the base's weights are in memory once.
Adapters are added and removed between steps (`add_adapter`, `remove_adapter`), under the
lock the scheduler holds while it steps. When every adapter is plain LoRA on linear layers
the rows are not split per adapter at all: lora_batch.py applies each row's adapter from
stacked weights in two batched matmuls per layer, which peft's per-adapter loop is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.serve import constrained
from runners.serve.batching import SchedulerThread
from runners.serve.errors import APIError
from runners.serve.generation import (
    Control,
    Generation,
    Sampling,
    StopScanner,
    finish_reason,
)
from runners.serve.logprobs import Piece, TokenLogprob, build, echo_groups, token_bytes
from runners.weights import SAFE_TOKENIZER, adapter_base, load_causal_lm, tokenizer_folder

PREFILL_ROWS = 16  # prompts prefilled in one forward pass, at most
BASE_ROW = "__base__"  # peft's name for a row that runs without an adapter


class AdapterError(ValueError):
    """An adapter that cannot be served here; the message names the folder and why."""


def not_served(adapter: str) -> APIError:
    """A request for an adapter unloaded after the request was admitted."""
    return APIError(
        404, f"The model '{adapter}' is no longer served", param="model", code="model_not_found"
    )


@dataclass(eq=False)
class _Request:
    ids: list[int]
    sampling: Sampling
    emit: Callable[[str], None]
    control: Control
    generator: Any = None  # torch.Generator when the request has a seed
    scanner: StopScanner = field(init=False)
    generated: list[int] = field(default_factory=list)
    decoded: str = ""
    pieces: list[str] = field(default_factory=list)
    position: int = 0  # position id of the next token fed to the model
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of generated tokens
    prompt_logprobs: list[TokenLogprob] | None = None  # of prompt tokens, with echo
    streamed: int = 0  # logprobs already sent with a piece
    matcher: Any = None  # llguidance matcher when the answer is constrained (constrained.py)
    # The peft adapter this request runs with, fixed when it is admitted: a new version of
    # its adapter swapped in meanwhile serves the requests admitted after the swap.
    key: str | None = None
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


class TransformersBackend:
    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        """A backend on a loaded model (`load` reads one from a folder; the evaluation runner
        passes the model lm-eval loaded)."""
        import torch

        self.torch = torch
        self.tokenizer = tokenizer
        self.model = model
        self.device = next(model.parameters()).device
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        # The most characters one token spells (byte-level and sentencepiece token strings
        # are at least as long as the text they decode to): routes.py refuses a prompt too
        # long for the context by its length, before tokenising it.
        try:
            longest = max((len(token) for token in tokenizer.get_vocab()), default=0)
        except Exception:  # a tokenizer without a vocabulary listing: routes.py's fallback
            longest = 0
        self.max_token_chars: int | None = longest or None
        self.vocab_size: int | None = getattr(model.config, "vocab_size", None)
        self.spelled: dict[int, tuple[str, bytes]] = {}  # token id -> its text, for logprobs
        self.token_bytes = token_bytes(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        eos = getattr(model.generation_config, "eos_token_id", None)
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = set(
            eos if isinstance(eos, list) else [eos] if eos is not None else []
        )
        self.grammars = constrained.Grammars(
            constrained.hf_tokenizer(tokenizer, int(model.config.vocab_size), self.eos_ids)
        )
        self.base_dir: Path | None = None  # the base folder adapters must name (load)
        self.adapters: set[str] = set()  # adapters new requests may name now
        self.keys: dict[str, str] = {}  # adapter name -> peft's name, while it has rows
        self.loads = 0  # adapters loaded so far: each gets a peft name of its own
        self.lock = threading.RLock()  # held by the scheduler while it steps
        self.changing = threading.Lock()  # one adapter change (add, replace, remove) at a time
        self.batched: Any = None  # lora_batch.BatchedLoRA when every adapter qualifies
        self.scheduler = Scheduler(self)

    def add_adapter(self, name: str, folder: Path) -> None:
        """Load a LoRA adapter on the served base, served as `name` once this returns;
        AdapterError when it names another base or is not an adapter folder."""
        with self.changing:
            if name in self.adapters:
                raise AdapterError(f"an adapter named '{name}' is served already; remove it first")
            key = self._load(folder)
            with self.lock:
                self.keys[name] = key
                self.adapters.add(name)

    def replace_adapter(
        self,
        name: str,
        folder: Path,
        wait_s: float = 60.0,
        switched: Callable[[], None] | None = None,
    ) -> None:
        """Serve another version of adapter `name` with no moment in which `name` is not
        served: the new one loads under a peft name of its own while the old one answers,
        then new requests switch to it at once; requests admitted before keep the old one
        until they finish (for up to `wait_s`), then its weights are dropped. KeyError when
        `name` is not served, AdapterError as add_adapter. `switched` runs at the switch."""

        with self.changing:
            if name not in self.adapters:
                raise KeyError(name)
            key = self._load(folder)
            with self.lock:
                old, self.keys[name] = self.keys[name], key
                if switched is not None:
                    switched()
            give_up = time.monotonic() + wait_s
            while time.monotonic() < give_up and any(
                r.key == old for r in list(self.scheduler.active)
            ):
                time.sleep(0.02)
            with self.lock:
                for request in [r for r in self.scheduler.active if r.key == old]:
                    request.control.cancelled.set()  # ran past wait_s: leaves at the next step
                self._drop(old)

    def _load(self, folder: Path) -> str:
        """Load the adapter in `folder` under a new peft name (served by no name yet)."""
        from peft import PeftModel

        base = adapter_base(folder)
        if base is None:
            raise AdapterError(f"{folder} is not a LoRA adapter folder (no adapter_config.json)")
        if self.base_dir is None or not base.resolve().samefile(self.base_dir.resolve()):
            raise AdapterError(
                f"{folder}: its base is {base}, but this runtime serves {self.base_dir}; "
                "adapters served together must share one base version"
            )
        self.loads += 1
        key = f"a{self.loads}"
        with self.lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(folder), adapter_name=key, is_trainable=False)
                self.model.set_adapter(key)
                # Kept: every served adapter and any a running request still uses.
                used = set(self.keys.values()) | {r.key for r in self.scheduler.active}
                for stale in [a for a in self.model.peft_config if a not in used | {key}]:
                    self.model.delete_adapter(stale)  # the last one removed (remove_adapter)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, str(folder), adapter_name=key, is_trainable=False
                ).eval()
            self.model.to(self.device)  # the new adapter's weights beside the base's
            self._restack()
        return key

    def _drop(self, key: str) -> None:
        """Drop a peft adapter's weights (under the lock). peft cannot hold no adapter at
        all: the last one stays loaded, unserved, until the next load replaces it."""
        peft_config = getattr(self.model, "peft_config", {})
        if key in peft_config and len(peft_config) > 1:
            if self.model.active_adapter == key:
                self.model.set_adapter(next(a for a in peft_config if a != key))
            self.model.delete_adapter(key)
            self._restack()

    def _restack(self) -> None:
        """Batch rows of different adapters with stacked weights (lora_batch.py) when every
        loaded adapter is plain LoRA; otherwise peft's `adapter_names` path (under the lock)."""
        from runners.serve.lora_batch import BatchedLoRA

        if BatchedLoRA.supports(self.model):
            if self.batched is not None and self.batched.model is self.model:
                self.batched.rebuild()
            else:
                self.batched = BatchedLoRA(self.model)
        elif self.batched is not None:
            self.batched.remove()
            self.batched = None

    @contextmanager
    def adapter_rows(self, requests: list[_Request]) -> Iterator[None]:
        """Around one forward pass: each row runs with its request's adapter."""
        if self.batched is None:
            yield
            return
        self.batched.select([r.key or self.keys.get(r.sampling.adapter or "") for r in requests])
        try:
            yield
        finally:
            self.batched.rows = None

    def remove_adapter(self, name: str, wait_s: float = 60.0) -> None:
        """Stop serving an adapter: new requests for it are refused at once, those running
        finish (for up to `wait_s`), then its weights are dropped. KeyError when not served."""

        with self.changing:
            with self.lock:
                self.adapters.remove(name)
            give_up = time.monotonic() + wait_s
            while time.monotonic() < give_up and any(
                r.sampling.adapter == name for r in list(self.scheduler.active)
            ):
                time.sleep(0.02)
            with self.lock:
                for request in [r for r in self.scheduler.active if r.sampling.adapter == name]:
                    request.control.cancelled.set()  # ran past wait_s: it leaves at the next step
                self._drop(self.keys.pop(name))

    def forward_kwargs(self, requests: list[_Request]) -> dict[str, Any]:
        """`adapter_names` for a batch when adapters are loaded and not batched by stacked
        weights (adapter_rows), one per row."""
        if self.batched is not None or not hasattr(self.model, "peft_config"):
            return {}
        keys = self.keys
        return {
            "adapter_names": [
                r.key or keys.get(r.sampling.adapter or "", BASE_ROW) for r in requests
            ]
        }

    @classmethod
    def load(cls, model_dir: Path, adapters: dict[str, Path] | None = None) -> TransformersBackend:
        import torch
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_folder(model_dir)), **SAFE_TOKENIZER
        )
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer in {model_dir} has no chat template; save one with the model "
                "(tokenizer.chat_template) so chat requests can be rendered"
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if device == "cuda" else torch.float32
        # An adapter version loads on its base and is merged in memory, never on disk.
        model = load_causal_lm(model_dir, merge=True, dtype=dtype)
        backend = cls(model.to(device).eval(), tokenizer)
        if adapters:
            if adapter_base(model_dir) is not None:
                raise AdapterError(
                    f"{model_dir} is itself an adapter; serve adapters on a full base version"
                )
            backend.base_dir = model_dir
            for name, folder in adapters.items():
                backend.add_adapter(name, folder)
        elif adapters is not None:
            backend.base_dir = model_dir
        return backend

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
        )

    @property
    def chat_template(self) -> str:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else str(template or "")

    def compile_constraint(self, constraint: constrained.Constraint) -> Any:
        """A compiled grammar for Sampling.constraint; APIError 400 when the schema is unusable."""
        return self.grammars.compile(constraint)

    def _encode(self, prompt: str, chat: bool) -> list[int]:
        # A chat template writes its own BOS; a raw completion prompt gets the tokenizer's.
        return list(self.tokenizer(prompt, add_special_tokens=not chat)["input_ids"])

    def count_tokens(self, prompt: str, chat: bool) -> int:
        return len(self._encode(prompt, chat))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def spell(self, token: int) -> tuple[str, bytes]:
        """A token's text as logprobs show it, special tokens included (as vLLM does)."""
        spelled = self.spelled.get(token)
        if spelled is None:
            text = self.decode([token])
            spelled = self.spelled[token] = (text, self.token_bytes(token, text))
        return spelled

    def generate(
        self,
        prompt: str | list[int],
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation:
        if isinstance(prompt, list):
            return self.generate_ids(prompt, sampling, emit, control)
        ids = self._encode(prompt, chat) or [self.tokenizer.bos_token_id or self.pad_token_id]
        return self.generate_ids(ids, sampling, emit, control)

    def generate_ids(
        self,
        ids: list[int],
        sampling: Sampling,
        emit: Callable[[str], None] = lambda _: None,
        control: Control | None = None,
    ) -> Generation:
        """Generate after prompt token ids; blocks while the scheduler batches it with others."""
        control = control or Control()
        if sampling.adapter is not None and sampling.adapter not in self.adapters:
            raise not_served(sampling.adapter)
        request = _Request(ids, sampling, emit, control)
        if sampling.constraint is not None:
            request.matcher = constrained.start(sampling.constraint)
        if sampling.seed is not None and sampling.temperature > 0:
            request.generator = self.torch.Generator(self.device).manual_seed(sampling.seed)
        self.scheduler.submit(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        control.raise_if_stopped(len(request.generated))
        assert request.result is not None
        return request.result

    def close(self) -> None:
        self.scheduler.close()


class Scheduler(SchedulerThread[_Request]):
    """The thread that owns the model and steps every active sequence together."""

    def __init__(self, backend: TransformersBackend) -> None:
        super().__init__()
        self.backend = backend
        self.torch = backend.torch
        self.kv: list[tuple[Any, Any]] = []  # per layer (keys, values), left-padded
        self.mask: Any = None  # [batch, length] 1 for real tokens, 0 for padding
        self.last: Any = None  # [batch] the token each sequence feeds next

    def _run(self) -> None:
        torch = self.torch
        while True:
            with self.condition:
                while not self.inbox and not self.active and not self.closed:
                    self.condition.wait()
                if self.closed and not self.inbox and not self.active:
                    return
                arrived = list(self.inbox)
                self.inbox.clear()
            try:
                with self.backend.lock, torch.inference_mode():
                    self._admit(arrived)
                    self._leave([i for i, r in enumerate(self.active) if r.control.should_stop()])
                    if self.active:
                        self._step()
            except BaseException as error:  # a failed forward fails its batch, not the server
                for request in [*arrived, *self.active]:
                    if not request.done.is_set():
                        request.error = error
                        request.done.set()
                self.active, self.kv, self.mask, self.last = [], [], None, None

    # -- one sequence in, one out ------------------------------------------------------

    def _admit(self, requests: list[_Request]) -> None:
        """Prefill new requests and merge them into the running batch. Requests that arrive
        together are prefilled together, left-padded (up to PREFILL_ROWS at a time): one
        forward pass reads the weights once for all of them instead of once per prompt."""
        live = []
        for request in requests:
            adapter = request.sampling.adapter
            if adapter is not None and adapter not in self.backend.adapters:
                request.error = not_served(adapter)
                request.done.set()  # removed while this request waited
            elif request.control.should_stop():
                self._finish(request)
            else:
                request.key = self.backend.keys.get(adapter) if adapter is not None else None
                live.append(request)
        plain = [r for r in live if not r.sampling.echo]
        for start in range(0, len(plain), PREFILL_ROWS):
            self._prefill(plain[start : start + PREFILL_ROWS])
        # echo keeps the logits at every prompt position: such prompts are grouped by size
        echo = [r for r in live if r.sampling.echo]
        vocab = self.backend.vocab_size or 1
        for group in echo_groups([len(r.ids) for r in echo], vocab, PREFILL_ROWS):
            self._prefill([echo[i] for i in group])

    def _prefill(self, group: list[_Request]) -> None:
        torch = self.torch
        from transformers import DynamicCache

        backend = self.backend
        width = max(len(r.ids) for r in group)
        ids = torch.full((len(group), width), backend.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, request in enumerate(group):
            ids[row, width - len(request.ids) :] = torch.tensor(request.ids)
            mask[row, width - len(request.ids) :] = 1
        ids, mask = ids.to(backend.device), mask.to(backend.device)
        cache = DynamicCache(config=backend.model.config)
        with backend.adapter_rows(group):
            out = backend.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(dim=1) - 1).clamp(min=0),
                cache=cache,
                use_cache=True,
                **backend.forward_kwargs(group),
                # echo scores every prompt token, so it needs the logits at every position
                logits_to_keep=0 if any(r.sampling.echo for r in group) else 1,
            )
        for row, request in enumerate(group):
            if request.sampling.echo:
                self._score_prompt(request, out.logits[row, width - len(request.ids) :])
        rows = self._logprob_rows(out.logits[:, -1, :], group)
        tokens = self._pick(out.logits[:, -1, :], group)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        last = torch.tensor(tokens, device=mask.device)
        if not self.active:
            self.kv, self.mask, self.last = kv, mask, last
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            self.kv = [
                (
                    torch.cat([_pad_left(k0, length, 2), _pad_left(k1, length, 2)]),
                    torch.cat([_pad_left(v0, length, 2), _pad_left(v1, length, 2)]),
                )
                for (k0, v0), (k1, v1) in zip(self.kv, kv, strict=True)
            ]
            self.mask = torch.cat([_pad_left(self.mask, length, 1), _pad_left(mask, length, 1)])
            self.last = torch.cat([self.last, last])
        first = len(self.active)
        self.active.extend(group)
        for request in group:
            request.position = len(request.ids)
        # Requests done after their first token leave as any finished sequence does.
        self._leave(
            [
                first + row
                for row, (request, token) in enumerate(zip(group, tokens, strict=True))
                if self._take(request, token, rows, row)
            ]
        )
        self.max_batch_seen = max(self.max_batch_seen, len(self.active))

    def _leave(self, finished: list[int]) -> None:
        if not finished:
            return
        for index in finished:
            self._finish(self.active[index])
        gone = set(finished)
        keep = [i for i in range(len(self.active)) if i not in gone]
        self.active = [self.active[i] for i in keep]
        if not self.active:
            self.kv, self.mask, self.last = [], None, None
            return
        rows = self.torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, rows)
        # Columns that are padding in every remaining row are dead weight: trim them.
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        self.kv = [
            (k.index_select(0, rows)[:, :, start:], v.index_select(0, rows)[:, :, start:])
            for k, v in self.kv
        ]
        self.last = self.last.index_select(0, rows)

    def _step(self) -> None:
        from transformers import DynamicCache

        torch = self.torch
        backend = self.backend
        batch = len(self.active)
        self.mask = torch.cat([self.mask, self.mask.new_ones((batch, 1))], dim=1)
        positions = torch.tensor(
            [[r.position] for r in self.active], dtype=torch.long, device=self.mask.device
        )
        cache = DynamicCache(ddp_cache_data=self.kv, config=backend.model.config)
        with backend.adapter_rows(self.active):
            out = backend.model(
                input_ids=self.last.view(batch, 1),
                attention_mask=self.mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                **backend.forward_kwargs(self.active),
            )
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.steps += 1
        for request in self.active:
            request.position += 1
        rows = self._logprob_rows(out.logits[:, -1, :], self.active)
        tokens = self._pick(out.logits[:, -1, :], self.active)
        self.last = torch.tensor(tokens, device=self.mask.device)
        self._leave(
            [
                i
                for i, (r, t) in enumerate(zip(self.active, tokens, strict=True))
                if self._take(r, t, rows, i)
            ]
        )

    # -- tokens -------------------------------------------------------------------------

    def _pick(self, logits: Any, requests: list[_Request]) -> list[int]:
        """The next token for each row: greedy at temperature 0, else top-p sampling."""
        torch = self.torch
        logits = logits.float()
        constrained.mask_logits(torch, logits, [r.matcher for r in requests])
        eos = sorted(self.backend.eos_ids)
        for row, request in enumerate(requests):
            if eos and len(request.generated) < request.sampling.min_tokens:
                logits[row, eos] = -float("inf")
        tokens = logits.argmax(dim=-1).tolist()
        for row, request in enumerate(requests):
            sampling = request.sampling
            if sampling.temperature <= 0:
                continue
            probs = torch.softmax(logits[row] / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                # Keep the smallest prefix whose mass reaches top_p (always the first token).
                drop = sorted_probs.cumsum(0) - sorted_probs >= sampling.top_p
                sorted_probs[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[row] = int(torch.multinomial(probs, 1, generator=request.generator))
        return tokens

    def _logprob_rows(self, logits: Any, requests: list[_Request]) -> Any:
        """log_softmax of the raw logits (before _pick masks them in place), or None when no
        request asked for logprobs."""
        if all(r.sampling.logprobs is None for r in requests):
            return None
        return self.torch.log_softmax(logits.float(), dim=-1)

    def _score_prompt(self, request: _Request, logits: Any) -> None:
        """echo: each prompt token's logprob given the ones before it; `logits` are the
        prompt's rows (position i predicts token i + 1)."""
        torch = self.torch
        ids = request.ids
        top = request.sampling.logprobs or 0
        scores = torch.log_softmax(logits[:-1].float(), dim=-1)
        chosen = scores.gather(1, torch.tensor(ids[1:], device=scores.device).unsqueeze(1))
        values, alternatives = scores.topk(top, dim=-1)
        request.prompt_logprobs = build(
            ids,
            [None, *chosen.squeeze(1).tolist()],
            [[], *alternatives.tolist()],
            [[], *values.tolist()],
            self.backend.spell,
        )

    def _take(self, request: _Request, token: int, rows: Any, row: int) -> bool:
        """Record the token's logprob when asked, then accept it; True when finished."""
        if request.sampling.max_tokens == 0:
            return True  # echo with max_tokens 0: the prompt is scored, nothing is generated
        top = request.sampling.logprobs
        if top is not None:
            values, alternatives = rows[row].topk(top)
            request.logprobs += build(
                [token],
                [float(rows[row, token])],
                [alternatives.tolist()],
                [values.tolist()],
                self.backend.spell,
            )
        return self._accept(request, token)

    def _accept(self, request: _Request, token: int) -> bool:
        """Take one generated token; True when the request is finished."""
        request.generated.append(token)
        if request.matcher is not None and constrained.consume(request.matcher, token):
            return True  # the JSON is complete; _finish shows the text still undecoded
        if token in self.backend.eos_ids:
            return True
        text = self.backend.tokenizer.decode(request.generated, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            request.show(request.scanner.feed(text[len(request.decoded) :]))
            request.decoded = text
        if request.scanner.stopped or len(request.generated) >= request.sampling.max_tokens:
            return True
        limit = self.backend.context_length
        if limit is not None and request.position + 1 >= limit:
            return True
        return request.control.should_stop()

    def _finish(self, request: _Request) -> None:
        if request.done.is_set():
            return
        scanner = request.scanner
        if not request.control.cancelled.is_set() and not scanner.stopped:
            text = self.backend.tokenizer.decode(request.generated, skip_special_tokens=True)
            request.show(scanner.feed(text[len(request.decoded) :]))
            request.decoded = text
        request.show(scanner.flush())
        generated = len(request.generated)
        request.result = Generation(
            text="".join(request.pieces),
            prompt_tokens=len(request.ids),
            completion_tokens=generated,
            finish_reason=finish_reason(scanner, generated, request.sampling.max_tokens),
            logprobs=request.logprobs if request.sampling.logprobs is not None else None,
            prompt_logprobs=request.prompt_logprobs,
        )
        request.done.set()


def _pad_left(tensor: Any, length: int, dim: int) -> Any:
    """Zeros before `tensor` along `dim` up to `length` (masked positions: never attended)."""
    import torch

    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
