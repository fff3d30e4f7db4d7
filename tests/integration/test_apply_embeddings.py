"""`llmops apply` with a Deployment that enables embeddings with an embedding Model of its own
(a sentence-transformers folder), on target local: apply pulls the embedding model, the
runtime config names its registry folder, and /v1/embeddings answers with its vectors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openai
import pytest

from runners.deploy.local import free_port
from tests.apply_repo import committed_repo, stop_runtimes
from tests.integration.test_apply import llmops
from tests.tiny import model_spec

DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata: {{name: assistant}}
spec:
  model: tiny
  target: local
  port: {port}
  limits: {{max_tokens: 8, max_concurrency: 2}}
  embeddings: {{enabled: true, model: embedder}}
"""
TEXTS = ["How do I reset my password?", "ok"]


@pytest.fixture
def repo(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    for name in ("LLMOPS_REGISTRY_URL", "LLMOPS_STATE_DIR", "LLMOPS_FAULT_KILL"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    embedder_folder = tmp_path / "embedder"
    transformer = Transformer(str(tiny_model))
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    embedder = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    embedder.save(str(embedder_folder))
    root = tmp_path / "repo"
    shutil.copytree(embedder_folder, root / "models/embedder")
    committed_repo(
        root,
        tiny_model,
        {
            "specs/models/embedder.yaml": model_spec(
                "embedder", {"type": "local", "path": "models/embedder"}
            ),
            "specs/deployments/assistant.yaml": DEPLOYMENT.format(port=port),
        },
        "tiny repository with an embedding model",
    )
    yield root, port
    stop_runtimes(root)


def test_apply_pulls_the_embedding_model_and_serves_its_vectors(repo: tuple[Path, int]) -> None:
    from sentence_transformers import SentenceTransformer

    root, port = repo
    applied = llmops(root, "apply", "--json")
    assert applied.returncode == 0, applied.stderr + applied.stdout
    state = json.loads((root / ".llmops/deployments/assistant/state.json").read_text())
    config = json.loads(Path(state["config_path"]).read_text())
    section = config["embeddings"]
    assert section["enabled"] is True and section["pooling"] == "mean"
    folder = Path(section["model_dir"])
    # The registry's copy, not the repository's folder.
    assert (folder / "modules.json").is_file() and root / "models" not in folder.parents

    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
    got = np.array(
        [d.embedding for d in api.embeddings.create(model="assistant", input=TEXTS).data]
    )
    expected = SentenceTransformer(str(root / "models/embedder"), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    assert float(np.abs(got - expected).max()) < 1e-5
