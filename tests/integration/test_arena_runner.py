"""Arena runner on a real tiny model: batched answers, an adapter folder, the pairwise judge.

The tiny random Llama writes gibberish, so these check structure and determinism only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.arena.answers import answer_key, generate_answers
from runners.arena.judge import PairwiseJudge, judge_battle, parse_verdict
from runners.arena.outcomes import WINNERS
from runners.errors import InvalidInput

PROMPTS = ["How do I reset my password?", "What is the capital of France?", "Can I export?"]


def test_answers_are_strings_deterministic_and_independent_of_batching(tiny_model: Path) -> None:
    seen: list[str] = []
    greedy = {"max_new_tokens": 10, "temperature": 0}
    first = generate_answers(tiny_model, PROMPTS, greedy, batch_size=2, report=seen.append)
    assert len(first) == len(PROMPTS) and all(isinstance(a, str) for a in first)
    assert any(first)  # the model said something
    assert seen[-1].endswith("answered 3/3 prompts") and len(seen) == 2
    # Left padding: a prompt's greedy answer does not depend on its batch neighbours.
    assert generate_answers(tiny_model, PROMPTS, greedy, batch_size=2) == first
    assert generate_answers(tiny_model, PROMPTS, greedy, batch_size=1) == first


def test_stop_strings_cut_and_sampling_follows_the_seed(tiny_model: Path) -> None:
    greedy = generate_answers(tiny_model, PROMPTS[:1], {"max_new_tokens": 10})[0]
    cut = [ch for ch in greedy[1:] if ch.strip()]
    assert cut, f"need a visible character to stop on in {greedy!r}"
    stop = cut[0]
    stopped = generate_answers(tiny_model, PROMPTS[:1], {"max_new_tokens": 10, "stop": [stop]})
    assert stopped[0] == greedy[: greedy.index(stop, 1)].strip()
    sampled = {"max_new_tokens": 10, "temperature": 1.0, "seed": 3}
    one = generate_answers(tiny_model, PROMPTS, sampled)
    assert generate_answers(tiny_model, PROMPTS, sampled) == one
    other = generate_answers(tiny_model, PROMPTS, {**sampled, "seed": 4})
    assert other != one


def test_a_peft_adapter_folder_answers_through_its_base_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "tokenizer.json").exists()  # tokenizer from the base
    settings = {"max_new_tokens": 10}
    adapted = generate_answers(tmp_path / "adapter", PROMPTS, settings)
    assert len(adapted) == 3 and all(isinstance(a, str) for a in adapted)
    assert adapted != generate_answers(tiny_model, PROMPTS, settings)  # the adapter is applied


def test_a_model_without_chat_template_is_a_user_error(tiny_model: Path, tmp_path: Path) -> None:
    import json
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(InvalidInput, match="no chat template"):
        generate_answers(plain, PROMPTS, {})


def test_pairwise_judge_verdicts_parse_or_count_as_unparseable(tiny_model: Path) -> None:
    judge = PairwiseJudge(tiny_model, rubric="Prefer the correct answer.", max_new_tokens=8)
    answers = ["Settings > Security.", "Paris."]
    verdict, raw = judge.verdict(PROMPTS[0], *answers)
    assert isinstance(raw, str) and verdict == parse_verdict(raw)
    assert judge.verdict(PROMPTS[0], *answers) == (verdict, raw)  # greedy: deterministic
    battle = judge_battle(judge, PROMPTS[0], *answers)
    assert [v["order"] for v in battle.verdicts] == ["ab", "ba"]
    parsed = [v["verdict"] for v in battle.verdicts]
    assert battle.unparseable == parsed.count(None)
    assert (battle.winner is None) == (battle.unparseable > 0)
    assert battle.winner is None or battle.winner in WINNERS


def test_answer_key_is_stable_and_covers_its_inputs() -> None:
    key = answer_key("p", "sha256:abc", {"max_new_tokens": 8, "temperature": 0})
    assert key.startswith("sha256:") and len(key) == 7 + 64
    assert key == answer_key("p", "sha256:abc", {"temperature": 0, "max_new_tokens": 8})
    assert key != answer_key("p", "sha256:abd", {"max_new_tokens": 8, "temperature": 0})
    assert key != answer_key("p ", "sha256:abc", {"max_new_tokens": 8, "temperature": 0})
    assert key != answer_key("p", "sha256:abc", {"max_new_tokens": 9, "temperature": 0})


def test_a_likelihood_judge_always_gives_a_verdict_and_its_bias_cancels(
    tiny_model: Path, tmp_path: Path
) -> None:
    from tests.tiny import make_scripted_model

    # After "[" this model predicts "B" (a bigram table): it always prefers position B.
    biased = make_scripted_model(tiny_model, tmp_path / "judge", "[B")
    judge = PairwiseJudge(biased, "Prefer correct answers.", mode="likelihood")
    verdict, raw = judge.verdict("How do I reset my password?", "Use Settings.", "No idea.")
    assert verdict == "B" and raw.startswith("likelihood [[A]]")
    scores = dict(part.rsplit(" ", 1) for part in raw.removeprefix("likelihood ").split(", "))
    assert float(scores["[[B]]"]) > max(float(scores[k]) for k in ("[[A]]", "[[C]]", "[[D]]"))
    judged = judge_battle(judge, "How do I reset my password?", "Use Settings.", "No idea.")
    assert judged.winner == "tie" and judged.unparseable == 0
