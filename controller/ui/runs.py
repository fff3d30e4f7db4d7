"""Dashboard, experiments and runs pages: every trained run (registry versions tagged with
an experiment), their curves overlaid from the training logs and the config keys that
differ between them."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from controller.state.registry.schema import FileRow, MetricRow, ModelRow, TagRow, VersionRow
from controller.ui.app import render, ui_state
from controller.ui.charts import CURVES, SMOOTH_MIN_POINTS, X_AXES, config_diff, run_series
from controller.ui.state import UiState
from runners.train.log import LOG_FILE

router = APIRouter()
DEFAULT_SHOWN = 8  # runs overlaid when the address names none


@dataclass
class RunLine:
    experiment: str
    run: str
    version: str  # name@number
    version_id: int
    created: str
    metrics: dict[str, float] = field(default_factory=dict)
    in_lock: bool = False

    @property
    def key(self) -> str:
        return f"{self.run}@{self.version}"

    @property
    def label(self) -> str:
        """How a chart's legend names the run: 'run default → support-assistant@1'."""
        return f"run {self.run} → {self.version}"


def list_runs(state: UiState) -> dict[str, list[RunLine]]:
    """Experiment -> its runs, newest first, from the registry's tags and training metrics."""
    registry = state.registry()
    out: dict[str, list[RunLine]] = defaultdict(list)
    if registry is None:
        return out
    locked = {
        str(e.outputs.version)
        for e in state.entries("Experiment").values()
        if getattr(e.outputs, "version", "")
    }
    with registry.sessions() as session:
        tags: dict[int, dict[str, str]] = defaultdict(dict)
        for version_id, key, value in session.execute(
            select(TagRow.version_id, TagRow.key, TagRow.value).where(
                TagRow.key.in_(("experiment", "run")),
                TagRow.version_id.in_(select(TagRow.version_id).where(TagRow.key == "experiment")),
            )
        ):
            tags[version_id][key] = value
        metrics: dict[int, dict[str, float]] = defaultdict(dict)
        for version_id, name, value in session.execute(
            select(MetricRow.version_id, MetricRow.name, MetricRow.value).where(
                MetricRow.suite == "training", MetricRow.version_id.in_(list(tags))
            )
        ):
            metrics[version_id][name.removeprefix("train/")] = value
        for version_id, model, number, created in session.execute(
            select(VersionRow.id, ModelRow.name, VersionRow.number, VersionRow.created_at)
            .join(ModelRow, ModelRow.id == VersionRow.model_id)
            .where(VersionRow.id.in_(list(tags)))
            .order_by(VersionRow.id.desc())
        ):
            ref = f"{model}@{number}"
            out[tags[version_id]["experiment"]].append(
                RunLine(
                    tags[version_id]["experiment"],
                    tags[version_id].get("run", "default"),
                    ref,
                    version_id,
                    f"{created:%Y-%m-%d %H:%M}" if created else "",
                    metrics[version_id],
                    ref in locked,
                )
            )
    return dict(sorted(out.items()))


def _training_file(state: UiState, version_id: int, name: str) -> str | None:
    registry = state.registry()
    assert registry is not None
    with registry.sessions() as session:
        sha = session.scalar(
            select(FileRow.sha256).where(
                FileRow.version_id == version_id, FileRow.path == f"training/{name}"
            )
        )
    if sha is None or not registry.blobs.exists(sha):
        return None
    return registry.blobs.read_text(sha)


def run_curves(state: UiState, run: RunLine) -> dict[str, list[float | None]]:
    """The run's log as columns (runners.train.log's format, stored with the version)."""
    key = f"curves:{run.version_id}"
    if key not in state.cache:
        state.cache[key] = run_series(parse_log(_training_file(state, run.version_id, LOG_FILE)))
    return state.cache[key]  # type: ignore[no-any-return]


def parse_log(text: str | None) -> list[dict[str, Any]]:
    """Records of a stored log; a line that is not a JSON object is left out."""
    records = []
    for line in (text or "").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def run_config(state: UiState, run: RunLine) -> dict[str, Any]:
    """The training config the run was started with (its job.json), paths left out."""
    key = f"config:{run.version_id}"
    if key not in state.cache:
        text = _training_file(state, run.version_id, "job.json")
        job = json.loads(text) if text else {}
        state.cache[key] = {"training": job.get("training", {}), "format": job.get("format")}
    return state.cache[key]  # type: ignore[no-any-return]


@dataclass
class ExperimentView:
    name: str
    runs: list[RunLine]
    shown: list[RunLine]
    series: dict[str, dict[str, list[float | None]]]
    differences: list[tuple[str, list[Any]]]


def experiment_view(state: UiState, name: str, chosen: list[str]) -> ExperimentView | None:
    runs = list_runs(state).get(name)
    if not runs:
        return None
    if chosen:
        shown = [r for r in runs if r.key in chosen]
    else:
        shown = [r for r in runs if r.in_lock] or runs
        shown = shown[:DEFAULT_SHOWN]
    series = {r.key: run_curves(state, r) for r in shown}
    differences = (
        config_diff({r.key: run_config(state, r) for r in shown}) if len(shown) > 1 else []
    )
    return ExperimentView(name, runs, shown, series, differences)


@router.get("/runs", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    return render(
        request, "runs.html", title="Experiments and runs", experiments=list_runs(ui_state(request))
    )


@router.get("/runs/{experiment}", response_class=HTMLResponse)
def experiment_page(
    request: Request, experiment: str, run: Annotated[list[str] | None, Query()] = None
) -> HTMLResponse:
    view = experiment_view(ui_state(request), experiment, run or [])
    if view is None:
        raise HTTPException(404, f"no trained runs of experiment '{experiment}'")
    return render(
        request,
        "experiment.html",
        title=f"Experiment {experiment}",
        view=view,
        curves=CURVES,
        axes=X_AXES,
        chart_data=view.series,
        chart_labels={r.key: r.label for r in view.shown},
        smooth_min=SMOOTH_MIN_POINTS,
    )
