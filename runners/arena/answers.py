"""Runner `arena`, answers: each contestant answers the prompt set, batched, cached by key.

Prompts go through the model's chat template, left-padded into batches; greedy when the
temperature is 0, sampled with a seed otherwise; stop strings cut the answer. A folder with
`adapter_config.json` is a PEFT adapter: it loads on the base model it names and is merged in
memory only (runners/weights.py), and the tokenizer comes from the adapter folder or else
from the base model.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runners.errors import InvalidInput
from runners.weights import SAFE_TOKENIZER, load_causal_lm, tokenizer_folder

DEFAULT_MAX_NEW_TOKENS = 128


def answer_key(prompt: str, model_digest: str, generation: dict[str, Any]) -> str:
    """A stable cache key for one model's answer to one prompt under these settings."""
    payload = json.dumps(
        {"prompt": prompt, "model": model_digest, "generation": generation},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the earliest stop string (the whole text when none occurs)."""
    ends = [text.find(s) for s in stop if s]
    ends = [end for end in ends if end >= 0]
    return text[: min(ends)] if ends else text


def generation_settings(
    generation: dict[str, Any],
) -> tuple[int, float, float, int | None, list[str]]:
    try:
        max_new = int(generation.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        temperature = float(generation.get("temperature", 0.0) or 0.0)
        top_p = float(generation.get("top_p", 1.0))
        seed = generation.get("seed")
        seed = None if seed is None else int(seed)
    except (TypeError, ValueError) as err:
        raise InvalidInput(
            f"arena generation settings {generation!r}: {err}; max_new_tokens and seed are "
            "integers, temperature and top_p are numbers"
        ) from err
    stop = generation.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidInput(
            f"arena generation field 'stop' is {stop!r}; give a list of strings, e.g. ['\\n\\n']"
        )
    if max_new < 1 or temperature < 0:
        raise InvalidInput(
            f"arena generation: max_new_tokens must be 1 or more and temperature 0 or more "
            f"(got {max_new} and {temperature})"
        )
    return max_new, temperature, top_p, seed, stop


def generate_answers(
    model_path: Path,
    prompts: list[str],
    generation: dict[str, Any],
    batch_size: int = 8,
    report: Callable[[str], None] | None = None,
) -> list[str]:
    """One answer per prompt, in order, from the model in `model_path`."""
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    max_new, temperature, top_p, seed, stop = generation_settings(generation)
    tokenizer = AutoTokenizer.from_pretrained(
        str(tokenizer_folder(model_path)), padding_side="left", **SAFE_TOKENIZER
    )
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput(
            f"model {model_path}: its tokenizer has no chat template, so arena prompts cannot "
            "be rendered; save one with the model (tokenizer.chat_template)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "auto" if device == "cuda" else torch.float32
    model = load_causal_lm(model_path, merge=True, dtype=dtype)
    model.to(device).eval()
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    )
    answers: list[str] = []
    step = max(1, batch_size)
    for start in range(0, len(prompts), step):
        batch = prompts[start : start + step]
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            for prompt in batch
        ]
        # The chat template writes its own BOS, if any.
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(device)
        if temperature > 0 and seed is not None:
            torch.manual_seed(seed + start)  # the same prompts and batches give the same answers
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new,
                pad_token_id=tokenizer.pad_token_id,
                **({"stop_strings": stop, "tokenizer": tokenizer} if stop else {}),
                **sampling,
            )
        width = inputs["input_ids"].shape[1]
        for row in out:
            text = tokenizer.decode(row[width:], skip_special_tokens=True)
            answers.append(cut_at_stop(text, stop).strip())
        if report is not None:
            report(f"{model_path.name}: answered {len(answers)}/{len(prompts)} prompts")
    return answers
