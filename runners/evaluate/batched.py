"""Runner `evaluate`, generation: lm-eval's HF model with continuous batching for generate_until.

lm-eval's HFLM generates in static batches: a batch of `batch_size` prompts decodes until its
longest answer is done, so short answers wait for long ones and the batch shrinks to one
busy row. Here every generate_until request goes through the serving backend's scheduler
(runners/serve/backend_transformers.py) with `concurrency` requests in flight: a finished
answer leaves the decode batch at once and the next prompt joins it. Prompts are encoded,
truncated, stopped and decoded exactly as HFLM does, so greedy answers are the same text
(the tests check this against lm-eval's own generate_until); log-likelihood requests stay
HFLM's. Sampled generation is seeded per request (its index), so a rerun repeats it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm import tqdm

from runners.serve.backend_transformers import TransformersBackend
from runners.serve.generation import Sampling


class ContinuousBatchingHFLM(HFLM):
    """HFLM whose generate_until keeps `concurrency` answers decoding together."""

    def __init__(self, *args: Any, concurrency: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.concurrency = max(1, concurrency)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        jobs = [self._job(index, *request.args, eos) for index, request in enumerate(requests)]
        progress = tqdm(
            total=len(jobs),
            disable=disable_tqdm or self.rank != 0,
            desc="Running generate_until requests (continuous batching)",
        )

        engine = TransformersBackend(self.model, self.tokenizer)

        def run(job: tuple[list[int], Sampling, list[str]]) -> str:
            ids, sampling, until = job
            text = engine.generate_ids(ids, sampling).text
            progress.update(1)
            # The scheduler already stopped at the first stop string; this keeps HFLM's exact
            # post-processing (e.g. a stop string that only appears once special tokens go).
            return postprocess_generated_text(text, until, None)

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="eval-gen") as pool:
                answers = list(pool.map(run, jobs))
        finally:
            progress.close()
            # The scheduler thread's OpenMP workers would otherwise keep spinning beside the
            # main thread's and slow the log-likelihood tasks that follow (measured ~15%).
            engine.close()
        for request, answer in zip(requests, answers, strict=True):
            self.cache_hook.add_partial("generate_until", request.args, answer)
        return answers

    def _job(
        self, index: int, context: str, gen_kwargs: dict[str, Any], eos: str
    ) -> tuple[list[int], Sampling, list[str]]:
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        # The same call HFLM makes for a batch, on a batch of one: same special tokens and
        # left truncation, and no padding to differ by.
        ids, _ = self.tok_batch_encode(
            [context], left_truncate_len=self.max_length - max_gen_toks, truncation=self.truncation
        )
        sampled = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0) > 0
        sampling = Sampling(
            max_tokens=max_gen_toks,
            temperature=float(kwargs["temperature"]) if sampled else 0.0,
            top_p=float(kwargs.get("top_p") or 1.0) if sampled else 1.0,
            stop=[term for term in until if term],
            seed=index if sampled else None,
        )
        return ids[0].tolist(), sampling, until
