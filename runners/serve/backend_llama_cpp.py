"""Runner `serve`, llama.cpp backend: a GGUF through llama_cpp.Llama, its own chat template."""

from __future__ import annotations

import threading
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

DEFAULT_CONTEXT = 4096


class LlamaCppBackend:
    kind = "llama-cpp"

    def __init__(self, gguf_path: Path, n_ctx: int = DEFAULT_CONTEXT) -> None:
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as err:
            raise ValueError(
                "backend 'llama-cpp' needs llama-cpp-python, which is not importable here "
                f"({err}); install the 'llama-cpp' extra or use backend 'transformers'"
            ) from None
        if not gguf_path.is_file():
            raise ValueError(f"GGUF file {gguf_path} does not exist")
        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, verbose=False)
        self.context_length: int | None = self.llm.n_ctx()
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{gguf_path.name} has no chat template in its metadata")
        model = self.llm._model  # token texts are only reachable through the loaded model

        def text(token: int) -> str:
            return model.token_get_text(token) if token != -1 else ""

        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=text(self.llm.token_eos()),
            bos_token=text(self.llm.token_bos()),
        )
        # A llama_cpp.Llama holds one KV cache: requests take turns.
        self.lock = threading.Lock()

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return str(self.formatter(messages=messages).prompt)  # type: ignore[arg-type]

    def _tokens(self, prompt: str, chat: bool) -> list[int]:
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=not chat, special=True))

    def count_tokens(self, prompt: str, chat: bool) -> int:
        return len(self._tokens(prompt, chat))

    def generate(
        self,
        prompt: str,
        chat: bool,
        sampling: Sampling,
        emit: Callable[[str], None],
        control: Control,
    ) -> Generation:
        llama_cpp = self.llama_cpp
        scanner = StopScanner(sampling.stop)
        tokens = self._tokens(prompt, chat)
        seen = {"generated": 0}
        pieces: list[str] = []

        def halt(input_ids: Any, logits: Any) -> bool:
            # Called once per sampled token, before that token joins input_ids.
            seen["generated"] = max(seen["generated"], len(input_ids) - len(tokens) + 1)
            return scanner.stopped or control.should_stop()

        processors = None
        if sampling.min_tokens:
            processors = llama_cpp.LogitsProcessorList(
                [llama_cpp.MinTokensLogitsProcessor(sampling.min_tokens, self.llm.token_eos())]
            )
        with self.lock:
            for chunk in self.llm.create_completion(
                prompt=tokens,
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                stream=True,
                stopping_criteria=llama_cpp.StoppingCriteriaList([halt]),
                logits_processor=processors,
            ):
                shown = scanner.feed(chunk["choices"][0]["text"])  # type: ignore[index]
                if shown:
                    pieces.append(shown)
                    emit(shown)
                if scanner.stopped:
                    break
        control.raise_if_stopped()
        rest = scanner.flush()
        if rest:
            pieces.append(rest)
            emit(rest)
        generated = seen["generated"]
        return Generation(
            text="".join(pieces),
            prompt_tokens=len(tokens),
            completion_tokens=generated,
            finish_reason=finish_reason(scanner, generated, sampling.max_tokens),
        )
