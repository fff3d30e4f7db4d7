"""runners/serve/logprobs.py: the OpenAI shapes, streamed splits, echo grouping, token bytes."""

from __future__ import annotations

from pathlib import Path

from runners.serve.logprobs import (
    ECHO_LOGITS_BYTES,
    Candidate,
    Piece,
    Streamed,
    TokenLogprob,
    completion_logprobs,
    echo_groups,
    token_bytes,
)


def entry(text: str, logprob: float | None, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(
        len(text),
        text,
        text.encode(),
        logprob,
        tuple(Candidate(0, t, t.encode(), v) for t, v in top),
    )


def test_completion_logprobs_are_openais_legacy_shape() -> None:
    shaped = completion_logprobs(
        [entry("Hi", None), entry(" there", -1.5, (" you", -0.5)), entry("!", -0.1, ("!", -0.1))],
        top=1,
        offset=0,
    )
    assert shaped.tokens == ["Hi", " there", "!"]
    assert shaped.token_logprobs == [None, -1.5, -0.1]
    # the best alternative and the chosen token; null for the first echoed token
    assert shaped.top_logprobs == [None, {" you": -0.5, " there": -1.5}, {"!": -0.1}]
    assert shaped.text_offset == [0, 2, 8]
    assert completion_logprobs([entry("x", -1.0)], top=0, offset=7).text_offset == [7]


def test_a_stream_sends_each_pieces_logprobs_then_the_rest() -> None:
    generated = [entry("a", -1.0), entry("b", -2.0), entry("<end>", -0.5)]
    stream = Streamed(top=0, offset=10)
    first = stream.completion(stream.piece(Piece("ab", generated[:2])))
    assert first is not None and first.text_offset == [10, 11]
    assert stream.piece("plain text, no logprobs") == []
    rest = stream.rest(generated)
    assert rest == generated[2:] and stream.rest(generated) == []
    assert Streamed(top=None).piece(Piece("a", generated)) is None


def test_echo_prompts_are_grouped_under_the_logits_budget() -> None:
    assert echo_groups([10, 20, 30], vocab=400, rows=16) == [[0, 1, 2]]
    assert [len(g) for g in echo_groups([5] * 40, vocab=400, rows=16)] == [16, 16, 8]
    wide = ECHO_LOGITS_BYTES // (4 * 49152)  # one prompt this long fills the budget alone
    assert echo_groups([wide, wide, 3], vocab=49152, rows=16) == [[0], [1], [2]]
    assert echo_groups([], vocab=10, rows=4) == []


def test_token_bytes_are_exact_for_pieces_of_a_character(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tests.tiny import make_tiny_llama

    tokenizer = AutoTokenizer.from_pretrained(str(make_tiny_llama(tmp_path / "tiny")))
    read = token_bytes(tokenizer)
    ids = tokenizer("é€", add_special_tokens=False)["input_ids"]
    pieces = [read(i, tokenizer.decode([i])) for i in ids]
    assert b"".join(pieces) == "é€".encode()
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert read(end, "<|end|>") == b"<|end|>"
