"""Runner `evaluate`, endpoint: an EvalSuite run against an OpenAI-compatible deployment.

Instead of loading a model folder, lm-eval's `local-completions` model sends every request to
`<base_url>/completions`: log-likelihoods as `echo` + `logprobs` over token ids (the runtime's
runners/serve/logprobs.py), generations as completions of the chat-templated prompt. lm-eval
still needs the served model's tokenizer here, to count context tokens and render the chat
template exactly as the in-process evaluation does, so the two agree request for request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runners.errors import LlmopsError


class EndpointError(LlmopsError):
    """The endpoint cannot be used as described; the message says what to set."""


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # the API root, e.g. http://127.0.0.1:8000/v1
    model: str  # the served model's name
    tokenizer: Path  # a local folder with the served model's tokenizer (and chat template)
    api_key_env: str | None = None  # the environment variable holding the bearer key
    concurrency: int = 8  # requests in flight; the runtime batches them
    max_length: int = 2048  # context tokens lm-eval keeps (left-truncating longer ones)

    def key(self) -> str:
        if self.api_key_env is None:
            return ""
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EndpointError(
                f"the endpoint's key variable {self.api_key_env} is not set here; export it "
                "or leave api_key_env out for an endpoint without a key"
            )
        return key

    def language_model(self) -> Any:
        """lm-eval's local-completions model on this endpoint."""
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        if not self.tokenizer.is_dir():
            raise EndpointError(
                f"the endpoint's tokenizer folder {self.tokenizer} does not exist; lm-eval needs "
                "the served model's tokenizer to count tokens"
            )
        return LocalCompletionsAPI(
            base_url=self.base_url.rstrip("/") + "/completions",
            model=self.model,
            tokenizer=str(self.tokenizer),
            tokenizer_backend="huggingface",  # "auto" would probe the server for a tokenizer
            tokenized_requests=True,  # scored exactly as the in-process evaluation tokenises
            batch_size=1,  # one prompt per request, as the runtime takes them
            num_concurrent=max(1, self.concurrency),
            max_length=self.max_length,
            header={"Authorization": f"Bearer {self.key()}"},
            max_retries=1,
        )
