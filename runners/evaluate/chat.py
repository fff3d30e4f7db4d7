"""Runner `evaluate`, chat endpoint: an EvalSuite's generate_until tasks answered by an
OpenAI-compatible chat endpoint (`<base_url>/chat/completions`) that a suite names as its
target, e.g. a hosted API or a Deployment of this repository.

The suite's tasks still run through lm-eval (same prompts, same exact_match), with this
lm-eval model in place of a loaded one: every request goes through the request cache
(runners/chat_cache.py), so a rerun sends nothing, at most `concurrency` in flight; 429 and
5xx replies are retried and counted by the client. An endpoint has no log-probabilities to
give, so log-likelihood tasks are refused with what to do instead.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.arena.answers import cut_at_stop
from runners.arena.chat_endpoint import ChatEndpoint
from runners.chat_cache import CachedReply, RequestCache, cached_chats, usage_of
from runners.errors import LlmopsError

MAX_API_STOPS = 4  # the OpenAI API takes at most four stop strings; all cut the text after


@dataclass(frozen=True)
class ChatTarget:
    """An endpoint as a suite's target: where, which model, how hard to ask (no key)."""

    name: str  # as the suite names it
    base_url: str
    model: str
    api_key_env: str | None = None
    concurrency: int = 4
    retries: int = 4
    timeout_s: float = 60.0
    serves: str | None = None  # a Deployment's: the version it serves
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """Recorded with the results: never the key, only the name of its variable."""
        out: dict[str, Any] = {"name": self.name, "endpoint": self.base_url, "model": self.model}
        if self.serves:
            out["serves"] = self.serves
        if self.api_key_env:
            out["api_key_env"] = self.api_key_env
        return out

    def settings(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "retries": self.retries,
            "timeout_s": self.timeout_s,
            "seed": self.seed,
        }


def chat_language_model(target: ChatTarget, cache_path: Path, field: str) -> ChatLM:
    """The lm-eval model that answers through `target`; `field` is the spec path of its
    settings, for messages."""
    client = ChatEndpoint(
        target.base_url,
        target.model,
        api_key_env=target.api_key_env,
        retries=target.retries,
        timeout_s=target.timeout_s,
        what=f"endpoint '{target.name}'",
        fields=field,
    )
    from lm_eval.api.model import LM  # heavy: only when a suite runs on an endpoint

    class LmEvalChat(ChatLM, LM):  # type: ignore[misc]
        def __init__(self) -> None:
            LM.__init__(self)
            ChatLM.__init__(self, client, RequestCache(cache_path), target)

    return LmEvalChat()


class ChatLM:
    """lm-eval's model interface over a cached chat endpoint (generate_until only); mixed
    with lm-eval's LM class when made (chat_language_model), so importing this module does
    not import lm-eval."""

    def __init__(self, client: ChatEndpoint, cache: RequestCache, target: ChatTarget) -> None:
        self.client = client
        self.cache = cache
        self.target = target
        self.replies: list[CachedReply] = []  # every reply this run, stored ones included
        self._lock = threading.Lock()

    # lm-eval asks these when a task applies a chat template: the endpoint applies its own.
    @property
    def tokenizer_name(self) -> str:
        return ""

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return ""

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return json.dumps(chat_history, ensure_ascii=False)

    @property
    def tokenizer(self) -> None:  # runners/evaluate/run.py counts tokens only for perplexity
        return None

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        raise self._no_logprobs()

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        raise self._no_logprobs()

    def _no_logprobs(self) -> LlmopsError:
        return LlmopsError(
            f"endpoint '{self.target.name}' answers chat completions, which give no "
            "log-probabilities: only generate_until tasks can run on it; evaluate a registered "
            "version for the others"
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """All requests of one task: grouped by their settings, each group asked at the
        endpoint's concurrency through the cache; each text cut at the task's stop strings."""
        texts: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            _, gen_kwargs = request.args
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(index)
        for key, indices in groups.items():
            gen_kwargs = json.loads(key)
            stops = [s for s in (gen_kwargs.get("until") or []) if s]
            temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
            if not gen_kwargs.get("do_sample", False):
                temperature = 0.0
            settings: dict[str, Any] = {
                "temperature": temperature,
                "seed": self.target.seed,
                "stop": stops[:MAX_API_STOPS] or None,
            }
            max_tokens = int(gen_kwargs.get("max_gen_toks", 64))
            prompts = [self._user_text(requests[i].args[0]) for i in indices]
            replies = cached_chats(
                self.client, self.cache, prompts, max_tokens, settings, self.target.concurrency
            )
            with self._lock:
                self.replies.extend(replies)
            for i, reply in zip(indices, replies, strict=True):
                texts[i] = cut_at_stop(reply.reply.text, stops)
        return texts

    def _user_text(self, context: Any) -> str:
        """The task's prompt: lm-eval gives the chat history as JSON (apply_chat_template
        above), or the plain prompt when the task sets chat_template: false."""
        text = getattr(context, "prompt", context)
        try:
            history = json.loads(text)
        except (TypeError, ValueError):
            return str(text)
        if isinstance(history, list) and all(isinstance(m, dict) for m in history):
            users = [m for m in history if m.get("role") == "user"]
            if len(users) == len(history) == 1:
                return str(users[0].get("content", ""))
            raise LlmopsError(
                f"endpoint '{self.target.name}' is asked one user message per prompt; this "
                "task's prompt has a system message or few-shot turns"
            )
        return str(text)

    def usage(self) -> dict[str, Any]:
        """Identity, settings, latency and token usage, and this run's requests and retries."""
        return {
            **self.target.identity(),
            "settings": self.target.settings(),
            **usage_of(self.replies, self.client),
        }
