"""Arena judging against references on real tiny models: a metric judge separates a model
that says the reference answer from one that does not, both orders judged; the judge's
position bias and agreement with human votes recorded; judge.require_agreement keeps the
votes of a judge people disagree with out of the leaderboard and the gates."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.apply.arena import ArenaRunner
from controller.state.registry.arena import ArenaStore
from controller.workspace import load, open_registry
from tests.servers import QuietHandler, start_in_background
from tests.tiny import make_scripted_model, model_spec

REFERENCE = "Trial: 14 days."  # no token twice: the scripted model can say it
QUESTIONS = [
    "How long is the Business trial?",
    "For how many days can we try Business for free?",
    "What is the length of the trial?",
    "How many trial days do we get?",
    "When does the Business trial end?",
    "Is the trial two weeks long?",
]


def arena(judge: str, extra: str = "", human: bool = False) -> str:
    return f"""
apiVersion: llmops/v1
kind: Arena
metadata: {{name: facts}}
spec:
  models: [knower, tiny]
  prompts: {{type: file, path: data/eval.jsonl, reference: answer, keywords: keywords}}
  battles_per_pair: 6
  generation: {{max_new_tokens: 16}}
  judge: {judge}
  human_votes: {str(human).lower()}
  bootstrap: {{rounds: 200, seed: 0}}
{extra}"""


ROUGE = "{type: metric, metric: rouge_l, tie_band: 0.05}"


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path) -> Path:
    root = tmp_path / "repo"
    for folder in ("specs/models", "specs/arenas", "data", "models"):
        (root / folder).mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models/tiny")
    make_scripted_model(tiny_model, root / "models/knower", REFERENCE)
    for name in ("tiny", "knower"):
        (root / f"specs/models/{name}.yaml").write_text(
            model_spec(name, {"type": "local", "path": f"models/{name}"})
        )
    rows = [
        {"id": f"q{i}", "question": q, "answer": REFERENCE, "keywords": ["14 days"]}
        for i, q in enumerate(QUESTIONS)
    ]
    (root / "data/eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run_arena(root: Path, spec: str) -> Any:
    (root / "specs/arenas/facts.yaml").write_text(spec)
    return ArenaRunner(load(root), open_registry(root), Console(quiet=True)).run("facts")


@pytest.mark.parametrize("judge", [ROUGE, "{type: metric, metric: keyword_recall}"])
def test_a_metric_judge_separates_the_model_that_knows_the_reference(
    repo: Path, judge: str
) -> None:
    result = run_arena(repo, arena(judge))
    battles = result.battles
    assert len(battles) == 6
    assert all(b.answer_a == REFERENCE for b in battles)  # knower says the reference
    assert all(b.extra["reference"]["answer"] == REFERENCE for b in battles)
    # knower is model_a: it wins every battle, in both orders (a judge that ties fails here)
    assert [v.winner for b in battles for v in b.votes] == ["model_a"] * 6
    assert all(
        [d["verdict"] for d in v.detail["verdicts"]] == ["A", "B"] for b in battles for v in b.votes
    )
    outputs = result.outputs()
    first, second = outputs.leaderboard
    assert (first.model, second.model) == ("knower@1", "tiny@1")
    assert first.lower > second.upper and (first.rank, second.rank) == (1, 2)
    assert outputs.judge is not None and outputs.judge.judge.startswith("metric:")
    assert outputs.judge.position_bias == 0.0 and outputs.judge.both_orders == 6
    assert outputs.judge.shared == 0  # no human votes in this arena


def test_a_metric_judge_reruns_nothing_and_a_new_reference_rejudges(repo: Path) -> None:
    run_arena(repo, arena(ROUGE))
    again = run_arena(repo, arena(ROUGE))
    assert (again.generated, again.judged) == (0, 0)
    rows = (repo / "data/eval.jsonl").read_text().replace(REFERENCE, "Fourteen days.")
    (repo / "data/eval.jsonl").write_text(rows)
    changed = run_arena(repo, arena(ROUGE))
    assert changed.generated == 0 and changed.judged == 6  # same answers, new reference


def test_a_row_without_its_reference_is_named(repo: Path) -> None:
    (repo / "data/eval.jsonl").write_text(json.dumps({"question": "Hi?"}) + "\n")
    with pytest.raises(Exception, match=r"eval.jsonl:1: no reference answer in field 'answer'"):
        run_arena(repo, arena(ROUGE))


AGREEMENT = "{type: metric, metric: rouge_l, require_agreement: {min_percent: 0.7, min_shared: 4}}"
GATE = "  gates:\n    - {candidate: knower, baseline: tiny, margin: 0, voters: judge}\n"


def test_judge_votes_count_only_while_people_agree_with_the_judge(
    repo: Path, run_cli: Callable[..., Any]
) -> None:
    spec = arena(AGREEMENT, GATE, human=True)
    result = run_arena(repo, spec)
    # No human votes yet: too few shared votes, so the judge's votes do not count.
    assert result.judge is not None and not result.judge.counted
    assert "0 shared vote(s), 4 needed" in result.judge.detail
    assert result.boards["all"].battles == 0 and result.boards["judge"].battles == 6
    assert not result.gates["rating/knower not_worse_than tiny"].passed
    # People prefer tiny every time: agreement 0%, the judge still does not count.
    store = ArenaStore(open_registry(repo))
    for battle in store.battles("facts"):
        store.add_vote(battle.id, voter_kind="human", voter_id="ann", winner="model_b")
    result = run_arena(repo, spec)
    judge = result.judge
    assert judge is not None and not judge.counted and judge.shared == 6
    assert judge.agreement == 0.0 and "agreement 0% is below 70%" in judge.detail
    assert result.boards["all"].battles == 6  # ann's votes only
    gate = result.gates["rating/knower not_worse_than tiny"]
    assert not gate.passed and "judge votes do not count" in gate.detail
    board = json.loads(run_cli("arena", "leaderboard", "facts", "--json", cwd=repo).stdout)
    assert board["battles"] == 6 and board["judge"]["counted"] is False
    shown = run_cli("arena", "leaderboard", "facts", cwd=repo).stdout
    assert "Agreement with people on 6 shared vote(s): 0%" in " ".join(shown.split())
    # A second person agrees with the judge on every battle: 50%, still short of 70%;
    # a third makes it 67%; a fourth 75%, and the judge's votes count again.
    for voter in ("bob", "cy", "dee"):
        for battle in store.battles("facts"):
            store.add_vote(battle.id, voter_kind="human", voter_id=voter, winner="model_a")
        result = run_arena(repo, spec)
        assert result.judge is not None
        assert result.judge.counted == (voter == "dee"), (voter, result.judge)
    assert result.judge.agreement == pytest.approx(0.75)
    assert result.boards["all"].battles == 6 * 4 + 6
    assert result.gates["rating/knower not_worse_than tiny"].passed
    outputs = result.outputs()
    assert outputs.judge is not None and outputs.judge.counted


class JudgeApi:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 standing in for an external judge
    API, with its own key: it prefers the answer that contains "14 days", answers 429 to
    its first request, and counts what it was asked."""

    def __init__(self, key: str) -> None:

        self.key = key
        self.requests: list[dict[str, Any]] = []
        api = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(body)
                if self.headers.get("Authorization") != f"Bearer {api.key}":
                    return self.reply(401, {"error": "bad key"})
                if len(api.requests) == 1:
                    return self.reply(429, {"error": "slow down"}, {"Retry-After": "0"})
                prompt = body["messages"][0]["content"]
                first = prompt.split("[The Start of Assistant A's Answer]")[1]
                first, second = first.split("[The Start of Assistant B's Answer]")
                a, b = "14 days" in first, "14 days" in second
                verdict = "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"
                self.reply(200, {"choices": [{"message": {"content": verdict + " Because."}}]})

            def reply(
                self, code: int, document: Any, headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(document).encode()
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server, self.url = start_in_background(Handler)


def test_an_endpoint_judge_retries_a_429_caches_its_verdicts_and_never_records_its_key(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-test-4f9a1c0e7d"
    monkeypatch.setenv("LLMOPS_KEY_JUDGE_API", key)
    api = JudgeApi(key)
    try:
        judge = (
            f"{{type: endpoint, base_url: '{api.url}', model: judge-xl, "
            "api_key: {env: LLMOPS_KEY_JUDGE_API}, rubric: Prefer the correct answer.}"
        )
        result = run_arena(repo, arena(judge))
        assert [v.winner for b in result.battles for v in b.votes] == ["model_a"] * 6
        assert len(api.requests) == 13 and (result.judge_requests, result.judge_retries) == (13, 1)
        # the judge saw each prompt's reference answer (reference-guided)
        assert all(
            "[The Start of Reference Answer]" in r["messages"][0]["content"] for r in api.requests
        )
        assert all(r["model"] == "judge-xl" and r["temperature"] == 0 for r in api.requests)
        assert result.judge is not None and result.judge.judge == "endpoint:judge-xl"
        assert result.judge.position_bias == 0.0
        again = run_arena(repo, arena(judge))
        assert again.judged == 0 and again.judge_requests == 0 and len(api.requests) == 13
        # the key is in no file the arena wrote: state, registry database, answers, records
        stored = [p for p in repo.rglob("*") if p.is_file()]
        assert any(p.name == "leaderboard.json" for p in stored)
        assert not [p for p in stored if key.encode() in p.read_bytes()]
        # a wrong key: a clear error that does not repeat the key
        monkeypatch.setenv("LLMOPS_KEY_JUDGE_API", "sk-wrong-key")
        (repo / "data/eval.jsonl").write_text(
            (repo / "data/eval.jsonl").read_text().replace(REFERENCE, "Two weeks.")
        )
        from runners.arena.endpoint_judge import EndpointJudgeError

        with pytest.raises(EndpointJudgeError, match="refused the request \\(HTTP 401\\)") as err:
            run_arena(repo, arena(judge))
        assert "sk-" not in str(err.value)
    finally:
        api.server.shutdown()
