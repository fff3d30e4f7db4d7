"""Dashboard, deployments page: where each deployment runs, which version it serves, whether
it is ready, its live request and token counts from the runtime's /metrics, and how many
interactions and feedback verdicts its collection store holds."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from controller.api.deployment import DeploymentSpec
from controller.load.desired import load_desired
from controller.observe.sources import SourceDigests
from controller.state.lockfile import DeploymentOutputs
from controller.targets.base import target_for
from controller.ui.app import render, ui_state
from controller.ui.state import UiState

router = APIRouter()
PREFIX = "llmops_serve_"


@dataclass
class DeploymentView:
    name: str
    target: str
    model: str
    version: str | None
    endpoint: str | None
    applied: bool
    live: dict[str, Any] | None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_error: str | None = None
    store: str | None = None
    collected: dict[str, int] = field(default_factory=dict)


def live_metrics(
    base_url: str, timeout: float = 0.5, key_env: str | None = None
) -> dict[str, float]:
    """The runtime's llmops_serve_* counters and gauges, summed over labels except status.

    A runtime with an API key guards /metrics with it too: the key is read from the variable
    the spec's `api_key: {env: NAME}` names, when this process has it."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    key = os.environ.get(key_env) if key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = httpx.get(f"{base_url.rstrip('/')}/metrics", timeout=timeout, headers=headers)
    if answer.status_code == 401:
        where = f"export {key_env} for 'llmops ui'" if key_env else "it needs the API key"
        raise PermissionError(f"the runtime's /metrics needs its API key: {where}")
    answer.raise_for_status()
    return summarize_metrics(text_string_to_metric_families(answer.text))


def summarize_metrics(families: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if not sample.name.startswith(PREFIX) or sample.name.endswith(("_bucket", "_created")):
                continue
            name = sample.name.removeprefix(PREFIX)
            if name == "requests_total" and "status" in sample.labels:
                name = f"requests_total{{status={sample.labels['status']}}}"
            out[name] = out.get(name, 0.0) + float(sample.value)
    return dict(sorted(out.items()))


def collected_counts(store: Path) -> dict[str, int]:
    """Interactions and feedback verdicts in a collection store (its JSONL files)."""
    counts: Counter[str] = Counter()
    for path in sorted(store.glob("*.jsonl")) if store.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                counts["unreadable"] += 1
                continue
            if not isinstance(record, dict):
                continue
            kind = record.get("type") or "interaction"
            if kind == "feedback":
                rating = record.get("rating")
                counts["feedback " + ("up" if rating in ("up", 1) else "down")] += 1
                if record.get("correction"):
                    counts["corrections"] += 1
            else:
                counts["interactions"] += 1
    return dict(counts)


def list_deployments(state: UiState) -> list[DeploymentView]:
    loaded = load_desired(
        state.root, cache_dir=state.paths.cache, observe_source=SourceDigests(state.paths)
    )
    desired = {r.name: r for r, _ in loaded.desired.specs(DeploymentSpec)} if loaded.desired else {}
    applied = {a.split("/", 1)[1]: e for a, e in state.entries("Deployment").items()}
    views = []
    for name in sorted(set(desired) | set(applied)):
        # Today's spec, else the one a removed deployment was applied with (the lock's).
        fields = dict(desired[name].fields if name in desired else applied[name].spec)
        spec = (
            desired[name].spec_as(DeploymentSpec)
            if name in desired
            else applied[name].applied_spec(DeploymentSpec)
        )
        outputs = applied[name].outputs if name in applied else None
        view = DeploymentView(
            name=name,
            target=spec.target if spec else "",
            model=spec.model if spec else "",
            version=outputs.version if isinstance(outputs, DeploymentOutputs) else None,
            endpoint=outputs.endpoint if isinstance(outputs, DeploymentOutputs) else None,
            applied=name in applied,
            live=None,
        )
        kind = target_for(view.target) if view.target else None
        process = kind.live(name, fields, state.paths) if kind and kind.live_is_local else None
        if process is not None:
            view.live = {
                "running": process.running,
                "ready": process.ready,
                "version": process.version,
                "pid": process.pid,
            }
            if process.running and process.endpoint:
                try:
                    key_env = spec.api_key.env if spec and spec.api_key else None
                    view.metrics = live_metrics(
                        process.endpoint.removesuffix("/v1"), key_env=key_env
                    )
                except Exception as err:  # any failure is shown, not raised
                    view.metrics_error = f"{type(err).__name__}: {err}"
        if spec and spec.collect.enabled:
            view.store = spec.collect.into or name
            view.collected = collected_counts(state.paths.collected(view.store))
        views.append(view)
    return views


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request) -> HTMLResponse:
    return render(
        request,
        "deployments.html",
        title="Deployments",
        deployments=list_deployments(ui_state(request)),
    )
