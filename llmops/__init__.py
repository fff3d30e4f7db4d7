"""The llmops Python client: `from llmops import Client` reads a repository's registry,
evaluations and deployments (see controller/client.py)."""

from controller.client import Client, Deployment, Evaluation, ModelVersion

__all__ = ["Client", "Deployment", "Evaluation", "ModelVersion"]
