"""Dashboard, evaluations pages: each evaluation's metrics against its baseline with the 95%
interval drawn as bars, its gates, and a per-sample browser of what got better or worse."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from controller.state.lockfile import EvaluationOutputs
from controller.state.provenance import trust_context
from controller.ui.app import render, ui_state
from controller.ui.charts import IntervalBar, interval_bars
from controller.ui.state import UiState

router = APIRouter()
SAMPLES_SHOWN = 20


@dataclass
class EvaluationView:
    address: str
    outputs: EvaluationOutputs
    bars: list[IntervalBar]
    zero: float
    rows: list[Any]


def list_evaluations(state: UiState) -> list[EvaluationView]:
    views = []
    for address, entry in state.entries("Evaluation").items():
        outputs = entry.outputs
        if not isinstance(outputs, EvaluationOutputs):
            continue
        rows = list(outputs.comparison)
        bars, zero = interval_bars([(r.metric, r.difference, r.low, r.high) for r in rows])
        views.append(EvaluationView(address, outputs, bars, zero, rows))
    return views


UNTRUSTED_SUFFIX = ".untrusted"  # the evaluate step's folder suffix for an untrusted ref


def results_folder(
    state: UiState, suite: str, ref: str, trusted: bool | None = None
) -> Path | None:
    """Where the evaluate runner kept `ref`'s results on `suite` (`<suite digest>-<code
    digest>[.untrusted]`): the newest folder of the suite's recorded digest, else the newest
    one. On a trusted ref (`trusted`, default: the checked-out ref's) only folders a trusted
    apply wrote count, so a pull request's apply on a shared state folder never supplies
    main's samples; on an untrusted ref its own folders come first."""
    if trusted is None:
        trusted = trust_context(state.root).trusted
    top = state.paths.evaluations(suite) / ref
    found = [
        p.parent
        for p in top.glob("*/results.json")
        if not (trusted and p.parent.name.endswith(UNTRUSTED_SUFFIX))
    ]
    if not found:
        return None
    entry = state.lock().get(f"EvalSuite/{suite}")
    digest = entry.digest.removeprefix("sha256:")[:16] if entry is not None else ""

    def rank(folder: Path) -> tuple[bool, bool, float]:
        own = folder.name.endswith(UNTRUSTED_SUFFIX) != trusted
        recorded = bool(digest) and folder.name.startswith(f"{digest}-")
        return recorded, own, (folder / "results.json").stat().st_mtime

    return max(found, key=rank)


def per_sample(value: float, weight: float) -> float:
    """A sample's score: a mean metric's value, or a corpus metric's contribution per unit
    (a perplexity's log-likelihood per token)."""
    return value / weight if weight else value


@dataclass
class SampleChange:
    id: str
    before: float
    after: float
    delta: float
    target: str = ""
    output_before: str = ""
    output_after: str = ""


@dataclass
class SampleBrowser:
    metric: str
    metrics: list[str]
    better: list[SampleChange] = field(default_factory=list)
    worse: list[SampleChange] = field(default_factory=list)
    same: int = 0
    note: str = ""


def _samples(folder: Path, task: str) -> dict[str, dict[str, Any]]:
    path = folder / f"samples-{task}.jsonl"
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {str(r["id"]): r for r in rows}


def compare_samples(
    before: dict[str, dict[str, Any]],
    after: dict[str, dict[str, Any]],
    metric: str,
    higher_is_better: bool,
) -> tuple[list[SampleChange], list[SampleChange], int]:
    """Samples in both runs whose score moved: (better, worse, unchanged), largest first."""
    better, worse, same = [], [], 0
    for sample_id in sorted(set(before) & set(after)):
        old, new = before[sample_id]["metrics"].get(metric), after[sample_id]["metrics"].get(metric)
        if old is None or new is None:
            continue
        a, b = per_sample(*old), per_sample(*new)
        change = SampleChange(
            sample_id,
            a,
            b,
            b - a,
            str(after[sample_id].get("target", "")),
            str(before[sample_id].get("output", "")),
            str(after[sample_id].get("output", "")),
        )
        if abs(b - a) < 1e-12:
            same += 1
        elif (b > a) == higher_is_better:
            better.append(change)
        else:
            worse.append(change)
    better.sort(key=lambda c: -abs(c.delta))
    worse.sort(key=lambda c: -abs(c.delta))
    return better, worse, same


def sample_browser(state: UiState, address: str, metric: str | None) -> SampleBrowser | None:
    entry = state.lock().get(address)
    if entry is None or not isinstance(entry.outputs, EvaluationOutputs):
        return None
    outputs = entry.outputs
    metrics = [r.metric for r in outputs.comparison]
    if not metrics or not outputs.baseline:
        return SampleBrowser(metric or "", metrics, note="no baseline to compare samples with")
    metric = metric if metric in metrics else metrics[0]
    row = next(r for r in outputs.comparison if r.metric == metric)
    task, _, name = metric.partition("/")
    base = results_folder(state, outputs.suite, outputs.baseline)
    cand = results_folder(state, outputs.suite, outputs.subject)
    if base is None or cand is None:
        return SampleBrowser(
            metric, metrics, note="the per-sample results are not in this state folder"
        )
    corpus = "perplexity" in name
    better, worse, same = compare_samples(
        _samples(base, task), _samples(cand, task), name, True if corpus else row.higher_is_better
    )
    note = "score per sample: log-likelihood per token (higher is better)" if corpus else ""
    return SampleBrowser(metric, metrics, better[:SAMPLES_SHOWN], worse[:SAMPLES_SHOWN], same, note)


@router.get("/evaluations", response_class=HTMLResponse)
def evaluations_page(request: Request) -> HTMLResponse:
    return render(
        request,
        "evaluations.html",
        title="Evaluations",
        evaluations=list_evaluations(ui_state(request)),
    )


@router.get("/evaluations/samples/{address:path}", response_class=HTMLResponse)
def samples_page(request: Request, address: str, metric: str | None = None) -> HTMLResponse:
    browser = sample_browser(ui_state(request), address, metric)
    if browser is None:
        raise HTTPException(404, f"no evaluation '{address}' in the lock file")
    return render(
        request, "samples.html", title=f"Samples of {address}", address=address, browser=browser
    )
