"""Adapter-only versions: a LoRA run without `merge` is registered as its adapter alone
(at most 2% of its base's bytes, naming its base version) and still evaluates, gates, serves
a chat completion through the local runtime and answers in the arena, with no merged copy of
the weights anywhere on disk."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import openai
import pytest

from runners.deploy.local import free_port, is_serving_process
from tests.apply_repo import API_KEY_ENV, build_repo, git
from tests.integration.test_apply import llmops

KEY = "sk-test-0123456789"


@pytest.fixture
def adapter_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.tiny import make_tiny_llama

    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    # Wide enough that the base's weights outweigh the tokenizer and training files an
    # adapter version carries (2.4M parameters, 9.5 MB); still seconds to train on a CPU.
    base = make_tiny_llama(tmp_path / "base", hidden=256, layers=4)
    port = free_port()
    root = build_repo(tmp_path / "repo", base, deploy_port=port)
    experiment = root / "specs/experiments/exp.yaml"
    text = experiment.read_text()
    assert "    merge: true\n" in text
    experiment.write_text(text.replace("    merge: true\n", ""))
    git(root, "commit", "-qam", "adapter only")
    yield root, port
    for state in (root / ".llmops/deployments").glob("*/state.json"):
        pid = json.loads(state.read_text())["pid"]
        if is_serving_process(pid):
            os.kill(pid, signal.SIGKILL)


def test_adapter_version_evaluates_and_serves_without_merged_weights(
    adapter_repo: tuple[Path, int],
) -> None:
    root, port = adapter_repo
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    results = {r["address"]: r for r in json.loads(applied.stdout)["results"]}
    evaluation = results["Evaluation/exp/default"]["outputs"]
    assert evaluation["subject"] == "assistant@1" and evaluation["baseline"] == "tiny@1"
    assert {c["metric"] for c in evaluation["comparison"]} >= {"ppl/perplexity", "answers/rouge_l"}
    assert results["Deployment/assistant"]["outputs"]["version"] == "assistant@1"

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    answer = client.chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "How do I reset my password?"}],
        max_tokens=8,
    )
    assert answer.choices[0].message.content

    # The version is the adapter alone, naming its base version's folder, not a path of the
    # machine it trained on.
    listed = {v["name"]: v for v in json.loads(llmops(root, "models", "list", "--json").stdout)}
    files = {f["path"] for f in listed["assistant"]["files"]}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    folder = Path(llmops(root, "models", "show", "assistant@1", "--path").stdout.strip())
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "../../tiny/1"
    # Nothing merged anywhere: the only full weights under .llmops are the base's blob.
    full = [
        p
        for p in (root / ".llmops").rglob("*")
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 1_000_000
    ]
    base_bytes = next(
        f["size"] for f in listed["tiny"]["files"] if f["path"] == "model.safetensors"
    )
    assert [p.stat().st_size for p in full] == [base_bytes], full

    # At most 2% of its base's bytes, as `llmops models du` counts them (tokenizer and
    # training files included).
    usage = json.loads(llmops(root, "models", "du", "--json").stdout)
    size = {row["ref"]: row["size"] for row in usage["versions"]}
    print(f"du: tiny@1 {size['tiny@1']} B, assistant@1 {size['assistant@1']} B")
    assert size["assistant@1"] <= 0.02 * size["tiny@1"], size

    # Loaded on its base the adapter changes the logits (it is not the base alone), and the
    # in-memory merge that serving and the arena use computes what peft's layers compute.
    import torch

    from runners.weights import load_causal_lm

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        plain = load_causal_lm(folder / "../../tiny/1")(ids).logits
        adapted = load_causal_lm(folder)(ids).logits
        merged = load_causal_lm(folder, merge=True)(ids).logits
    assert (adapted - plain).abs().max() > 1e-4
    assert torch.allclose(adapted, merged, atol=1e-4)

    # A brain scan reads the adapter against its base version (from the lineage).
    scanned = llmops(root, "inspect", "assistant@1", "--json")
    assert scanned.returncode in (0, 1), scanned.stderr  # 1: alarms on a 4-step run
    scan = json.loads(scanned.stdout)
    assert scan["kind"] == "adapter" and scan["deltas"], sorted(scan)

    # The arena's answers load the adapter on its base the same way.
    from runners.arena.answers import generate_answers

    (text,) = generate_answers(folder, ["How do I reset my password?"], {"max_new_tokens": 4})
    assert isinstance(text, str)


def test_a_deployment_serves_the_base_and_its_adapter_from_one_process(
    adapter_repo: tuple[Path, int],
) -> None:
    """Deployment `adapters`: apply materialises the adapter version beside its base and
    hands both to one runtime, which serves the base under the Deployment's name and the
    adapter under its Model's; an adapter of the Deployment's own name is refused."""
    root, port = adapter_repo
    first = llmops(root, "apply", "--json")
    assert first.returncode == 0, first.stderr + first.stdout
    spec = root / "specs/deployments/assistant.yaml"
    text = spec.read_text()
    text = text.replace("model: assistant@champion", "model: tiny@1\n  adapters: [assistant@1]")
    spec.write_text(text)
    git(root, "commit", "-qam", "the base, with the adapter")
    refused = llmops(root, "apply")
    assert refused.returncode != 0
    assert "has the Deployment's own name" in refused.stdout + refused.stderr
    # A new deployment, so a port of its own (a port is shared only by one deployment's versions).
    port = free_port()
    renamed = text.replace("name: assistant}", "name: support}")
    spec.write_text(re.sub(r"port: \d+", f"port: {port}", renamed))
    git(root, "commit", "-qam", "renamed")
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    assert [m.id for m in client.models.list().data] == ["support", "assistant"]
    for model in ("support", "assistant"):
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.model == model and answer.system_fingerprint in ("tiny@1", "assistant@1")
