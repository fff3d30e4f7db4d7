"""Runner `serve`, embeddings: OpenAI's /v1/embeddings, from the served transformers model's
pooled hidden states or from an embedding model of its own (a sentence-transformers folder,
or any transformers encoder pooled the same way), computed in a worker thread.

Off unless the config enables it (a 404 naming `spec.embeddings.enabled` otherwise). The
llama.cpp backend embeds only with an embedding model of its own: config.py refuses to start
one enabled without `embeddings.model_dir`.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from openai.types import embedding_create_params
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runners.serve.config import Embeddings, ServeConfig
from runners.serve.errors import APIError, from_validation
from runners.serve.metrics import PROMPT_TOKENS
from runners.serve.usage import current_usage
from runners.weights import SAFE_MODEL, SAFE_TOKENIZER

OPENAI_KEYS = frozenset(
    embedding_create_params.EmbeddingCreateParams.__required_keys__
    | embedding_create_params.EmbeddingCreateParams.__optional_keys__
)
MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
BATCH_ROWS = 32  # inputs per forward pass: bounds the padded batch's memory
SENTENCE_TRANSFORMERS_MARKER = "modules.json"


class EmbeddingRequest(BaseModel):
    """openai.types.EmbeddingCreateParams; an unknown field is a 400 naming it."""

    model_config = ConfigDict(extra="ignore")
    KNOWN: ClassVar[frozenset[str]] = OPENAI_KEYS

    model: str = Field(min_length=1)
    # The shape is checked by `_shape` first: one message naming `input` for a wrong one.
    input: list[list[int]] | list[int] | list[str] | str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(k for k in data if k not in cls.KNOWN)
            if unknown:
                raise ValueError(
                    f"unrecognized request argument {unknown[0]!r}; "
                    "see the OpenAI API reference for this endpoint"
                )
        return data

    @field_validator("input", mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        # Checked here, so a wrong shape is one message naming `input` rather than one per
        # union branch; and strictly: pydantic's lax mode would read true as token id 1.
        def ids(item: Any) -> bool:
            return isinstance(item, list) and all(_is_id(t) for t in item)

        if isinstance(value, str) or (
            isinstance(value, list)
            and (all(isinstance(v, str) for v in value) or ids(value) or all(ids(v) for v in value))
        ):
            return value
        raise ValueError(
            "expected a string, a list of strings, a list of token ids (integers) or a list "
            "of such lists"
        )

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("the input is an empty string; send text to embed")
            return value
        if not value:
            raise ValueError("the input list is empty; send at least one text or token list")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"{len(value)} inputs; at most {MAX_INPUTS} per request")
        for index, item in enumerate(value):
            if isinstance(item, str | list) and not item:
                raise ValueError(f"input[{index}] is empty; every input needs a token")
        return value

    @field_validator("dimensions")
    @classmethod
    def _no_dimensions(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(
                "this deployment returns its model's full embedding size; leave dimensions out"
            )
        return value

    def inputs(self) -> list[str] | list[list[int]]:
        """One entry per embedding: texts, or token-id lists."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)  # type: ignore[arg-type]


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(data: dict[str, Any]) -> EmbeddingRequest:
    try:
        return EmbeddingRequest.model_validate(data)
    except ValidationError as err:
        raise from_validation(err) from None


def encode(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    """A vector as the response carries it: floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        import numpy as np

        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def response(
    vectors: Sequence[Sequence[float]], encoding_format: str, model: str, prompt_tokens: int
) -> dict[str, Any]:
    """OpenAI's CreateEmbeddingResponse."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": encode(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def disabled_error() -> APIError:
    return APIError(
        404,
        "embeddings are not enabled on this deployment; set spec.embeddings.enabled: true "
        "in its Deployment spec and apply",
        param="spec.embeddings.enabled",
        code="embeddings_not_enabled",
    )


class Embedder:
    """Token ids to vectors: a transformers encoder (or a causal LM's base model) pooled by
    mean over the attention mask or by the last token, or a SentenceTransformer's own
    modules; each batch right-padded under an attention mask, so padding changes no real
    token's state."""

    def __init__(
        self,
        tokenizer: Any,
        base_model: Any | None,
        pooling: str,
        normalize: bool,
        sentence_transformer: Any = None,
    ) -> None:
        import torch

        self.torch = torch
        self.tokenizer = tokenizer
        self.base_model = base_model
        self.pooling = pooling
        self.normalize = normalize
        self.st = sentence_transformer
        module = sentence_transformer if sentence_transformer is not None else base_model
        self.device = next(module.parameters()).device
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.vocab_size = len(tokenizer)
        limit = sentence_transformer.max_seq_length if sentence_transformer is not None else None
        config = getattr(module, "config", None)
        self.max_tokens: int | None = limit or getattr(config, "max_position_embeddings", None)
        # One forward pass at a time per embedder, off the event loop and off the generation
        # threads: a burst of embeddings queues here rather than taking generation slots.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def token_ids(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Each input's token ids (the tokenizer's special tokens included, as the model was
        trained to see a text); 400 naming the input that cannot be embedded."""
        out = []
        for index, item in enumerate(inputs):
            if isinstance(item, str) and self.st is not None:
                # The model's own preprocessing (its special tokens, its max_seq_length), so a
                # vector equals SentenceTransformer.encode's.
                features = self.st.preprocess([item])
                kept = features["attention_mask"][0].bool()
                ids = features["input_ids"][0][kept].tolist()
            elif isinstance(item, str):
                ids = list(self.tokenizer(item, add_special_tokens=True)["input_ids"])
            else:
                ids = list(item)
                bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    raise APIError(
                        400,
                        f"input[{index}]: token id {bad} is outside the embedding model's "
                        f"vocabulary (0 to {self.vocab_size - 1})",
                        param="input",
                        code="invalid_value",
                    )
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                raise APIError(
                    400,
                    f"input[{index}] is {len(ids)} tokens; the embedding model takes at most "
                    f"{self.max_tokens}: shorten it or split it",
                    param="input",
                    code="context_length_exceeded",
                )
            out.append(ids)
        return out

    def embed(self, ids: list[list[int]]) -> list[list[float]]:
        """The vectors of token-id lists, in order; runs in the embedder's thread."""
        vectors: list[list[float]] = []
        with self.torch.no_grad():
            for start in range(0, len(ids), BATCH_ROWS):
                vectors += self._batch(ids[start : start + BATCH_ROWS])
        return vectors

    def _batch(self, rows: list[list[int]]) -> list[list[float]]:
        torch = self.torch
        width = max(len(row) for row in rows)
        input_ids = torch.tensor(
            [row + [self.pad_id] * (width - len(row)) for row in rows], device=self.device
        )
        mask = torch.tensor(
            [[1] * len(row) + [0] * (width - len(row)) for row in rows], device=self.device
        )
        if self.st is not None:
            features = {"input_ids": input_ids, "attention_mask": mask}
            pooled = self.st(features)["sentence_embedding"]
        else:
            hidden = self.base_model(
                input_ids=input_ids, attention_mask=mask, use_cache=False
            ).last_hidden_state
            pooled = pool(torch, hidden, mask, self.pooling)
        pooled = pooled.float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.cpu().tolist()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def pool(torch: Any, hidden: Any, mask: Any, pooling: str) -> Any:
    """Mean of the hidden states over the attention mask, or the last real token's."""
    if pooling == "last":
        last = mask.sum(dim=1) - 1  # right-padded: the last real token's position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def is_sentence_transformers(folder: Path) -> bool:
    return (folder / SENTENCE_TRANSFORMERS_MARKER).is_file()


def load_embedder(settings: Embeddings, backend: Any) -> Embedder:
    """The embedder the config names: its own model folder, else the served transformers
    model's base model (sharing its weights; read-only forward passes, so beside the
    generation scheduler)."""
    if settings.model_dir is None:
        if getattr(backend, "kind", None) != "transformers":
            raise ValueError("embeddings need embeddings.model_dir with this backend")
        model = backend.model
        return Embedder(backend.tokenizer, model.base_model, settings.pooling, settings.normalize)
    folder = settings.model_dir
    if not folder.is_dir():
        raise ValueError(f"embedding model {folder} is not a folder")
    if is_sentence_transformers(folder):
        from sentence_transformers import SentenceTransformer

        # Loaded on the CPU: an embedding model is small, and the accelerator is the
        # served model's. Its own pooling and normalization modules apply.
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        st.eval()
        return Embedder(st.tokenizer, None, settings.pooling, settings.normalize, st)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), **SAFE_TOKENIZER)
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, **SAFE_MODEL)
    return Embedder(tokenizer, model.eval(), settings.pooling, settings.normalize)


def check_enabled(config: ServeConfig) -> None:
    """404 before the body is read, on a deployment that does not embed."""
    if not config.embeddings.enabled:
        raise disabled_error()


async def answer(
    embedder: Embedder | None, config: ServeConfig, data: dict[str, Any]
) -> dict[str, Any]:
    """The response body to a POST /v1/embeddings body; counts its tokens as the request's
    usage (the client's totals and daily quota, accounting.py)."""
    check_enabled(config)
    if embedder is None:
        raise APIError(
            503,
            "the model is not ready (still loading); retry when /v2/health/ready answers 200",
            type="server_error",
            code="model_not_ready",
            headers={"Retry-After": "5"},
        )
    req = parse_request(data)
    if req.model != config.name:
        raise APIError(
            404,
            f"The model '{req.model}' does not exist; this deployment serves "
            f"'{config.name}' (GET /v1/models lists it)",
            param="model",
            code="model_not_found",
        )
    loop = asyncio.get_running_loop()
    inputs = req.inputs()
    ids = await loop.run_in_executor(embedder.executor, embedder.token_ids, inputs)
    prompt_tokens = sum(len(row) for row in ids)
    try:
        vectors = await asyncio.wait_for(
            loop.run_in_executor(embedder.executor, embedder.embed, ids),
            timeout=config.limits.timeout_s,
        )
    except TimeoutError:
        raise APIError(
            504,
            f"embedding took longer than this deployment's timeout of "
            f"{config.limits.timeout_s:g} s; send fewer inputs or retry later",
            type="timeout_error",
            code="timeout",
        ) from None
    PROMPT_TOKENS.inc(prompt_tokens)
    usage = current_usage()
    if usage is not None:
        usage.add(prompt_tokens, 0)
    return response(vectors, req.encoding_format, config.name, prompt_tokens)
