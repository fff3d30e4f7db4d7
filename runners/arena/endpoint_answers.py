"""Runner `arena`, endpoint answers: a contestant behind an OpenAI-compatible chat endpoint
answers the prompt set, at most `concurrency` requests in flight, with the arena's
generation settings; the reply's latency and token usage are kept per answer."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runners.arena.answers import cut_at_stop, generation_settings
from runners.arena.chat_endpoint import ChatEndpoint, ChatReply


def endpoint_answers(
    client: ChatEndpoint,
    prompts: list[str],
    generation: dict[str, Any],
    concurrency: int = 4,
    report: Callable[[str], None] | None = None,
) -> list[ChatReply]:
    """One reply per prompt, in order; each text cut at the stop strings and stripped."""
    max_new, temperature, top_p, seed, stop = generation_settings(generation)
    settings: dict[str, Any] = {
        "temperature": temperature,
        "top_p": top_p if temperature > 0 else None,
        "seed": seed,
        "stop": stop[:4] or None,  # the OpenAI API takes at most four; all cut the text below
    }

    def ask(prompt: str) -> ChatReply:
        reply = client.chat(prompt, max_new, **settings)
        return ChatReply(
            cut_at_stop(reply.text, stop).strip(),
            reply.latency_s,
            reply.prompt_tokens,
            reply.completion_tokens,
        )

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        replies = list(pool.map(ask, prompts))
    if report is not None:
        report(f"{client.model} at {client.url}: answered {len(replies)} prompts")
    return replies
