"""Runner `serve`, model: the kserve.Model that loads a backend, ready after its smoke check."""

from __future__ import annotations

import time
from typing import Any

import kserve

from runners.serve.config import ServeConfig, Smoke
from runners.serve.embeddings import Embedder, load_embedder
from runners.serve.generation import Backend, Control, Sampling


class ModelFailed(Exception):
    """The model did not load or failed its smoke check; the message says which and why."""


def load_backend(config: ServeConfig) -> Backend:
    """The backend the config names, loaded; ModelFailed says what is wrong with the files."""
    try:
        if config.backend == "llama-cpp":
            from runners.serve.backend_llama_cpp import LlamaCppBackend

            gguf = config.gguf_file()
            assert gguf is not None
            return LlamaCppBackend(gguf, sequences=config.limits.max_concurrency)
        from runners.serve.backend_transformers import TransformersBackend

        assert config.model_dir is not None
        if not config.model_dir.is_dir():
            raise ValueError(f"{config.model_dir} is not a folder")
        adapters = {a.name: a.dir for a in config.adapters}
        return TransformersBackend.load(config.model_dir, adapters)
    except Exception as err:  # any library error here means "these files do not load"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelFailed(
            f"model failed to load ({config.backend}): {type(err).__name__}: {first}"
        ) from err


def smoke_check(backend: Backend, smoke: Smoke) -> list[str]:
    """Answer each smoke prompt greedily through the chat template; ModelFailed on an empty one."""
    answers = []
    for index, prompt in enumerate(smoke.prompts, start=1):
        shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
        try:
            text = backend.chat_prompt([{"role": "user", "content": prompt}])
            result = backend.generate(
                text,
                True,
                Sampling(max_tokens=smoke.max_tokens, temperature=0.0),
                lambda _: None,
                Control(),
            )
        except Exception as err:
            raise ModelFailed(
                f"smoke check failed: prompt {index} ({shown!r}) raised {type(err).__name__}: {err}"
            ) from err
        if not result.text.strip():
            raise ModelFailed(
                f"smoke check failed: prompt {index} ({shown!r}) got an empty answer "
                f"(finish_reason {result.finish_reason}, {result.completion_tokens} tokens)"
            )
        answers.append(result.text)
    return answers


class ServeModel(kserve.Model):
    """Registered with kserve's ModelServer: its `ready` is what /v2 readiness reports."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config.name)
        self.config = config
        self.backend: Backend | None = None
        self.embedder: Embedder | None = None  # with embeddings enabled, once loaded
        self.created = int(time.time())

    def load(self, ready: bool = True) -> bool:
        """Load and smoke-check; ready=False leaves readiness to the caller (public port)."""
        backend = load_backend(self.config)
        smoke_check(backend, self.config.smoke)
        if self.config.embeddings.enabled:  # before readiness: /v1/embeddings answers once ready
            try:
                self.embedder = load_embedder(self.config.embeddings, backend)
            except Exception as err:
                first = (str(err).strip().splitlines() or [""])[0]
                raise ModelFailed(
                    f"embedding model failed to load: {type(err).__name__}: {first}"
                ) from err
        self.backend = backend
        self.ready = ready
        return self.ready

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        # kserve answers NotImplementedError with 501 and this message: the v1/v2 tensor
        # protocols are deliberately not served by a text-generation runtime.
        raise NotImplementedError(
            "this runtime speaks the OpenAI protocol: POST /openai/v1/chat/completions "
            "or /openai/v1/completions"
        )
