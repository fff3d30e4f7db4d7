"""Example application, shared part: where the deployment is and how to send it feedback.

The example scripts run by path (`python examples/openai_app/app.py`), so they import this
file as a sibling module.
"""

from __future__ import annotations

import argparse
import os

import httpx


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--base-url, --api-key, --model and --max-tokens, defaulting from LLMOPS_* variables."""
    parser.add_argument(
        "--base-url", default=os.environ.get("LLMOPS_BASE_URL", "http://127.0.0.1:8000/v1")
    )
    parser.add_argument(
        "--api-key", default=os.environ.get("LLMOPS_API_KEY", "none"), help="or LLMOPS_API_KEY"
    )
    parser.add_argument("--model", default=os.environ.get("LLMOPS_MODEL"), help="the deployment")
    parser.add_argument("--max-tokens", type=int, default=64)


def send_feedback(base_url: str, api_key: str, feedback: dict) -> httpx.Response:
    """POST /v1/feedback ({"id": reply id, "rating": "up"|"down", "correction": ...})."""
    return httpx.post(
        f"{base_url.rstrip('/')}/feedback",
        json=feedback,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
