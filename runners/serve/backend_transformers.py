"""Runner `serve`, transformers backend: model.generate with the chat template, streamed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from runners.serve.generation import (
    Control,
    Generation,
    Sampling,
    StopScanner,
    finish_reason,
)
from runners.weights import SAFE_MODEL, SAFE_TOKENIZER


class TransformersBackend:
    kind = "transformers"

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), **SAFE_TOKENIZER)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer in {model_dir} has no chat template; save one with the model "
                "(tokenizer.chat_template) so chat requests can be rendered"
            )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "auto" if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, **SAFE_MODEL)
        self.model.to(self.device).eval()
        self.context_length: int | None = getattr(
            self.model.config, "max_position_embeddings", None
        )
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def _encode(self, prompt: str, chat: bool) -> Any:
        # A chat template writes its own BOS; a raw completion prompt gets the tokenizer's.
        return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=not chat)

    def count_tokens(self, prompt: str, chat: bool) -> int:
        return int(self._encode(prompt, chat)["input_ids"].shape[1])

    def generate(
        self,
        prompt: str,
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        torch = self.torch
        scanner = StopScanner(sampling.stop)
        pieces: list[str] = []

        def show(text: str) -> None:
            if text:
                pieces.append(text)
                emit(text)

        class Sink(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                show(scanner.feed(text))

        class Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                stop = scanner.stopped or control.should_stop()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool)

        inputs = self._encode(prompt, chat).to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": self.pad_token_id,
            "streamer": Sink(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
            "stopping_criteria": StoppingCriteriaList([Halt()]),
        }
        if sampling.min_tokens:
            kwargs["min_new_tokens"] = min(sampling.min_tokens, sampling.max_tokens)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        control.raise_if_stopped()
        show(scanner.flush())
        generated = int(output.shape[1]) - prompt_tokens
        return Generation(
            text="".join(pieces),
            prompt_tokens=prompt_tokens,
            completion_tokens=generated,
            finish_reason=finish_reason(scanner, generated, sampling.max_tokens),
        )
