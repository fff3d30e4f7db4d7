"""The production loop end to end on the tiny model: a deployment collects chats and feedback
from the official openai client, `llmops pipeline run` pins them into the dataset on a branch,
retrains, regression-tests against the served version, pushes the branch to a real bare
remote and opens a pull request on the GitHub stand-in; after a real merge, `llmops apply`
rolls the new version out while requests keep being answered."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.conftest import PROJECT_ROOT
from tests.fake_github import FakeGitHub
from tests.integration.test_apply import llmops
from tests.servers import serve
from tests.serving import steady_traffic

KEY = "sk-test-0123456789"
EMAIL = "jane.doe@example.com"
PIPELINE = """
apiVersion: llmops/v1
kind: Pipeline
metadata: {name: retrain}
spec:
  trigger: {min_new_rows: 40}
  steps:
    - {step: update_dataset, dataset: faq}
    - {step: retrain, experiment: exp, run: default}
    - {step: regression_test, suite: smoke, against: assistant}
    - {step: open_pull_request, deployment: assistant, reviewers: [ml-team], labels: [promotion]}
"""


class RemoteBranches(dict):  # type: ignore[type-arg]
    """The stand-in's view of the repository's branches: what the bare remote has now."""

    def __init__(self, remote: Path) -> None:
        super().__init__()
        self.remote = remote

    def _heads(self) -> dict[str, str]:
        out = subprocess.run(
            ["git", "ls-remote", "--heads", str(self.remote)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        pairs = (line.split() for line in out.splitlines())
        return {ref.removeprefix("refs/heads/"): sha for sha, ref in pairs}

    def __contains__(self, branch: object) -> bool:
        return branch in self._heads()

    def __getitem__(self, branch: str) -> str:
        return self._heads()[branch]

    def get(self, branch: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._heads().get(branch, default)

    def values(self) -> Any:  # type: ignore[override]
        return self._heads().values()

    def setdefault(self, branch: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._heads().get(branch, default)


@pytest.fixture
def loop(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    port = free_port()
    root = build_repo(tmp_path / "repo", tiny_model, deploy_port=port)
    (root / "specs/pipelines").mkdir(parents=True)
    (root / "specs/pipelines/retrain.yaml").write_text(PIPELINE)
    # A DVC repository with the embedded default remote, as the demo repository has.
    shutil.copytree(
        PROJECT_ROOT / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache")
    )
    shutil.copy(PROJECT_ROOT / ".dvcignore", root / ".dvcignore")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the production loop")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    git(root, "remote", "add", "origin", str(remote))
    git(root, "push", "-q", "origin", "main")
    fake = FakeGitHub(
        pulls=(), commits=(), branches=RemoteBranches(remote), collaborators={"ml-team"}
    )
    with serve(fake.handler()) as url:
        env = {
            "GITHUB_TOKEN": fake.token,
            "GITHUB_REPOSITORY": f"{fake.owner}/{fake.name}",
            "GITHUB_API_URL": url,
        }
        yield {"root": root, "port": port, "remote": remote, "fake": fake, "env": env}
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def chat(port: int, count: int, start: int = 0) -> dict[str, list[str]]:
    """`count` questions through the openai client with feedback: every fifth corrected (with
    an email address in the correction), every fifth rated down, the rest rated up."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    kinds: dict[str, list[str]] = {"corrected": [], "down": [], "up": []}
    for index in range(start, start + count):
        question = f"Question {index}: how do I change setting {index} for {EMAIL}?"
        reply = client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": question}], max_tokens=6
        )
        if index % 5 == 0:
            verdict = {"id": reply.id, "rating": "down", "correction": f"Fixed answer {index}."}
            kinds["corrected"].append(f"Fixed answer {index}.")
        elif index % 5 == 1:
            verdict = {"id": reply.id, "rating": "down"}
            kinds["down"].append(question.replace(EMAIL, "[EMAIL]"))
        else:
            verdict = {"id": reply.id, "rating": "up"}
            kinds["up"].append(question.replace(EMAIL, "[EMAIL]"))
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/feedback",
            json=verdict,
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert response.status_code == 200, response.text
    return kinds


def run_pipeline(loop: dict, *args: str, env: dict[str, str] | None = None) -> dict:
    done = llmops(
        loop["root"],
        "pipeline",
        "run",
        "retrain",
        "--json",
        *args,
        env={**loop["env"], **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def commit_lock(root: Path) -> None:
    """What the apply workflow does on main after an apply (with the prepared data's .dvc)."""
    git(root, "add", "-A")
    git(root, "commit", "-qm", "llmops: update lock [skip ci]")


def remote_heads(remote: Path) -> dict[str, str]:
    return RemoteBranches(remote)._heads()


def test_collected_feedback_becomes_a_pull_request_then_a_deployment(loop: dict) -> None:
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    first = llmops(root, "apply", "--json")
    assert first.returncode == 0, first.stderr
    commit_lock(root)
    kinds = chat(port, 200)

    record = run_pipeline(loop)
    assert record["status"] == "succeeded", record
    assert record["window"]["rows"] >= 200  # and the rollout's own check
    assert record["window"]["kept"] == len(kinds["up"]) + len(kinds["corrected"]) == 160

    # The snapshot: corrected answers in, thumbs-down rows out, no email address.
    worktree = root / ".llmops/pipelines/retrain/worktree"
    snapshot = worktree / record["steps"]["update_dataset"]["snapshot"]
    rows = [json.loads(line) for line in snapshot.read_text().splitlines()]
    answers = {r["response"] for r in rows}
    prompts = {r["prompt"] for r in rows}
    assert set(kinds["corrected"]) <= answers
    assert not prompts & set(kinds["down"]) and set(kinds["up"]) <= prompts
    assert EMAIL not in snapshot.read_text()

    # A retrained version, regression-tested against what the deployment serves now.
    assert record["steps"]["retrain"]["version"] == "assistant@2"
    regression = record["steps"]["regression_test"]
    assert (regression["baseline"], regression["candidate"]) == ("assistant@1", "assistant@2")
    assert all(g["passed"] for g in regression["gates"].values()) and regression["gates"]

    # The branch on the bare remote, and one pull request whose body is the report.
    branch = record["branch"]
    assert branch.startswith("llmops/pipeline/retrain/")
    heads = remote_heads(loop["remote"])
    assert branch in heads
    spec = git(root, "show", f"{heads[branch]}:specs/datasets/faq.yaml")
    assert record["steps"]["update_dataset"]["snapshot"] in spec
    assert f"{record['steps']['update_dataset']['snapshot']}.dvc" in git(
        root, "ls-tree", "-r", "--name-only", heads[branch]
    )
    (pull,) = fake.pull_requests.values()
    assert pull["head"] == branch and pull["base"] == "main"
    assert pull["body"].startswith("<!-- llmops-report -->")
    assert "Evaluation/exp/default" in pull["body"]
    assert pull["requested_reviewers"] == ["ml-team"] and pull["labels"] == ["promotion"]
    number = record["steps"]["open_pull_request"]["pull_request"]["number"]

    # Nothing new: skipped, nothing pushed, no second pull request.
    again = run_pipeline(loop)
    assert again["status"] == "skipped" and "0 new row(s)" in again["message"]
    assert remote_heads(loop["remote"])[branch] == heads[branch]
    assert len(fake.pull_requests) == 1

    # New rows: the same pull request, updated.
    chat(port, 50, start=200)
    third = run_pipeline(loop)
    assert third["status"] == "succeeded", third
    assert third["branch"] == branch and third["window"]["rows"] >= 250
    assert third["steps"]["open_pull_request"]["pull_request"] == {
        "number": number,
        "url": pull["html_url"],
        "created": False,
    }
    assert len(fake.pull_requests) == 1
    assert remote_heads(loop["remote"])[branch] != heads[branch]
    candidate = third["steps"]["retrain"]["version"]

    # The merge, then the normal apply rolls it out with requests answered throughout.
    git(root, "fetch", "-q", "origin")
    git(
        root,
        "merge",
        "-q",
        "--no-ff",
        f"origin/{branch}",
        "-m",
        f"Merge pull request #{number} from acme/{branch}",
    )
    with steady_traffic(port, KEY, "assistant", pause_s=0.05) as traffic:
        applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    assert results["Deployment/assistant"]["outputs"]["version"] == candidate
    assert "Experiment/exp/default" not in {
        a for a, r in results.items() if r["status"] == "applied"
    }, "the merged version was trained for the pull request, not again"
    assert traffic.failures == [] and traffic.answered > 0
    commit_lock(root)

    # The audit trail: deployment -> version -> run -> dataset -> collected window -> PR.
    history = llmops(root, "history", "Deployment/assistant")
    assert history.returncode == 0, history.stderr
    merged_snapshot = third["steps"]["update_dataset"]["snapshot"].split("/")[-1]
    assert f"serves {candidate}" in history.stdout, history.stdout
    assert "trained by Experiment/exp/default on Dataset/faq" in history.stdout, history.stdout
    assert f"with collected window(s) {merged_snapshot}, approved in PR #{number}" in (
        history.stdout
    ), history.stdout


def test_a_candidate_that_fails_a_gate_opens_no_pull_request(loop: dict) -> None:
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    assert llmops(root, "apply").returncode == 0
    commit_lock(root)
    chat(port, 60)
    suite = root / "specs/evals/smoke.yaml"
    # A bar no model clears: the regression test must say which gate stopped it.
    strict = "max_drop: 1.0}\n    - {metric: answers/rouge_l, min: 0.99}"
    suite.write_text(suite.read_text().replace("max_drop: 1.0}", strict))
    git(root, "commit", "-qam", "a stricter suite")
    git(root, "push", "-q", "origin", "main")
    done = llmops(root, "pipeline", "run", "retrain", env=loop["env"])
    assert done.returncode == 1
    assert "failed gate(s) answers/rouge_l min" in done.stderr
    assert fake.pull_requests == {}
    assert not [h for h in remote_heads(loop["remote"]) if h.startswith("llmops/")]
    (issue,) = [i for i in fake.issues.values() if i["title"].startswith("llmops pipeline retrain")]
    assert "answers/rouge_l min" in issue["body"]
    statuses = [s for sha in fake.statuses for s in fake.statuses[sha]]
    assert any(
        s["context"] == "llmops/pipeline/retrain" and s["state"] == "failure" for s in statuses
    )
    status = json.loads(llmops(root, "pipeline", "status", "retrain", "--json").stdout)
    assert status["runs"][-1]["status"] == "failed"


def test_a_rollout_that_fails_its_check_is_proposed_for_revert(
    loop: dict, tiny_model: Path
) -> None:
    """A merged change points the deployment at a model that answers nothing: the rollout's
    check fails, the old version keeps serving, and apply opens a pull request reverting the
    merge so the specs say again what serves."""
    from tests.tiny import make_mute_model, model_spec

    root, port, fake = loop["root"], loop["port"], loop["fake"]
    assert llmops(root, "apply").returncode == 0
    commit_lock(root)
    git(root, "checkout", "-q", "-b", "try-mute")
    make_mute_model(tiny_model, root / "models/mute")
    (root / "specs/models/mute.yaml").write_text(
        model_spec("mute", {"type": "local", "path": "models/mute"})
    )
    deployment = root / "specs/deployments/assistant.yaml"
    deployment.write_text(deployment.read_text().replace("assistant@champion", "mute"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "Serve the mute model")
    git(root, "checkout", "-q", "main")
    subject = "Merge pull request #12 from acme/try-mute"
    git(root, "merge", "-q", "--no-ff", "try-mute", "-m", subject)
    merge = git(root, "rev-parse", "HEAD").strip()

    applied = llmops(root, "apply", "--revert-on-failure", env=loop["env"])
    assert applied.returncode == 1, applied.stdout[-2000:] + applied.stderr[-2000:]
    assert "failed: Deployment/assistant" in applied.stderr
    assert "revert pull request #" in applied.stderr and "opened" in applied.stderr

    branch = f"llmops/revert/{merge[:12]}"
    heads = remote_heads(loop["remote"])
    assert branch in heads
    reverted = git(root, "show", f"{heads[branch]}:specs/deployments/assistant.yaml")
    assert "model: assistant@champion" in reverted
    assert git(root, "log", "-1", "--format=%s", heads[branch]).startswith(
        'Revert "Merge pull request #12 from acme/try-mute"'
    )
    (pull,) = fake.pull_requests.values()
    assert pull["head"] == branch and pull["labels"] == ["revert"]
    assert "failed its post-deploy check" in pull["title"]
    # The previous version kept serving throughout.
    status = json.loads(llmops(root, "status", "--json").stdout)
    live = next(r for r in status["resources"] if r["address"] == "Deployment/assistant")
    assert live["live"]["running"] and live["live"]["version"] == "assistant@1"
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    ).choices


# The loop with a preference retrain: the Dataset the pipeline updates is `format:
# preference`, so each correction collected becomes a pair (the correction chosen over the
# served answer), and the Experiment trains it with DPO. The regression suite scores held-out
# pairs beside the perplexity task (the Experiment's suite too, so the pull request's report
# shows them); each pair is there twice, once swapped, so no model's preference accuracy
# exceeds 0.5 and a `min: 0.9` gate fails whatever the training did.
PREFERENCE_SPECS = {
    "specs/datasets/prefs.yaml": """
apiVersion: llmops/v1
kind: Dataset
metadata: {name: prefs}
spec:
  format: preference
  sources: [{type: file, path: data/prefs.jsonl}]
  steps: [{step: normalize}, {step: redact_pii}, {step: dedup}]
  splits: {train: 1.0, validation: 0.0, test: 0.0}
""",
    "specs/experiments/exp.yaml": """
apiVersion: llmops/v1
kind: Experiment
metadata: {name: exp}
spec:
  base_model: tiny
  dataset: prefs
  training:
    objective: dpo
    preference: {beta: 0.1}
    max_steps: 4
    batch_size: 4
    learning_rate: 1.0e-4
    max_seq_len: 96
    checkpoint_interval: 2
    merge: true
    lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}
  eval_suite: prefs
  register_as: assistant
""",
    "specs/evals/prefs.yaml": """
apiVersion: llmops/v1
kind: EvalSuite
metadata: {name: prefs}
spec:
  tasks:
    - {name: pairs, type: preference, data: {type: file, path: data/heldout-pairs.jsonl},
       metrics: [preference_accuracy, logprob_margin]}
    - name: ppl
      type: loglikelihood_rolling
      data: {type: file, path: data/eval.jsonl}
      prompt: "{question}\\n{answer}"
      metrics: [perplexity]
      limit: 6
  gates:
    - {metric: ppl/perplexity, max_drop: 1.0}
  bootstrap: {samples: 200, confidence: 0.95, seed: 0}
""",
}


def preference_loop(root: Path) -> None:
    """Turn the fixture's repository into the preference loop, committed and pushed."""
    for relative, text in PREFERENCE_SPECS.items():
        (root / relative).write_text(text)
    seed = [
        {"prompt": f"Question {i}: which word?", "chosen": f"Word {i}.", "rejected": "No idea."}
        for i in range(16)
    ]
    (root / "data/prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seed))
    heldout = []
    for i in range(6):
        pair = {"prompt": f"Held out {i}?", "chosen": f"Answer {i}.", "rejected": "Nothing."}
        heldout += [pair, {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}]
    (root / "data/heldout-pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    pipeline = root / "specs/pipelines/retrain.yaml"
    pipeline.write_text(
        pipeline.read_text()
        .replace("dataset: faq}", "dataset: prefs}")
        .replace("suite: smoke,", "suite: prefs,")
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the preference loop")
    git(root, "push", "-q", "origin", "main")


def test_collected_corrections_retrain_with_dpo_into_a_pull_request(loop: dict) -> None:
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    preference_loop(root)
    first = llmops(root, "apply", "--json")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    commit_lock(root)
    kinds = chat(port, 60)

    record = run_pipeline(loop)
    assert record["status"] == "succeeded", record
    assert record["window"]["kept"] == len(kinds["corrected"]) == 12

    # The snapshot holds pairs: each correction chosen over the answer the model served.
    worktree = root / ".llmops/pipelines/retrain/worktree"
    snapshot = worktree / record["steps"]["update_dataset"]["snapshot"]
    rows = [json.loads(line) for line in snapshot.read_text().splitlines()]
    assert [r["chosen"] for r in rows] == kinds["corrected"]
    assert all(r["prompt"].startswith("Question ") and r["rating"] == "down" for r in rows)
    assert all(r["rejected"] != r["chosen"] for r in rows)
    assert EMAIL not in snapshot.read_text()
    served = [
        json.loads(line)
        for path in sorted((root / ".llmops/collected/assistant-chats").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    answers = {r["id"]: r["response"] for r in served if r["type"] == "interaction"}
    assert {r["rejected"] for r in rows} <= set(answers.values())

    # A DPO retrain, regression-tested on the preference suite, and a pull request whose
    # report shows the preference metrics beside the perplexity.
    assert record["steps"]["retrain"]["version"] == "assistant@2"
    regression = record["steps"]["regression_test"]
    assert (regression["baseline"], regression["candidate"]) == ("assistant@1", "assistant@2")
    assert regression["gates"] and all(g["passed"] for g in regression["gates"].values())
    (pull,) = fake.pull_requests.values()
    assert "pairs/preference_accuracy" in pull["body"] and "ppl/perplexity" in pull["body"]
    logs = [p.read_text() for p in (root / ".llmops").rglob("log.jsonl")]
    assert sum("rewards/margins" in text for text in logs) >= 2  # the first run and the retrain


def test_a_failed_preference_gate_opens_no_pull_request(loop: dict) -> None:
    root, port, fake = loop["root"], loop["port"], loop["fake"]
    preference_loop(root)
    assert llmops(root, "apply").returncode == 0
    commit_lock(root)
    chat(port, 60)
    suite = root / "specs/evals/prefs.yaml"
    # Each held-out pair is also there swapped: no model's accuracy can reach 0.9.
    strict = "max_drop: 1.0}\n    - {metric: pairs/preference_accuracy, min: 0.9}"
    suite.write_text(suite.read_text().replace("max_drop: 1.0}", strict))
    git(root, "commit", "-qam", "a preference gate")
    git(root, "push", "-q", "origin", "main")
    done = llmops(root, "pipeline", "run", "retrain", env=loop["env"])
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "failed gate(s) pairs/preference_accuracy min" in done.stderr
    assert fake.pull_requests == {}
    assert not [h for h in remote_heads(loop["remote"]) if h.startswith("llmops/")]
    (issue,) = [i for i in fake.issues.values() if i["title"].startswith("llmops pipeline retrain")]
    assert "pairs/preference_accuracy min" in issue["body"]
    status = json.loads(llmops(root, "pipeline", "status", "retrain", "--json").stdout)
    assert status["runs"][-1]["status"] == "failed"
    assert status["runs"][-1]["steps"]["retrain"]["version"] == "assistant@2"
