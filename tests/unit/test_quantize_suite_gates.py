"""A quantized artifact's default suite gates (runners/quantize/suite.py) judged by the
Evaluation's own judge on paired bootstrap comparisons: perplexity relative to the source,
other metrics non-inferior within the margin; and the spec's new gate fields stay out of the
dump at their defaults (digests do not move)."""

from __future__ import annotations

from pathlib import Path

from controller.api.model import QuantizedSource, QuantizeGate
from controller.load.desired import load_desired
from runners.evaluate.compare import judge_gates, paired_bootstrap
from runners.quantize.suite import default_gates
from tests.tiny import model_spec


def _judge(source: dict, artifact: dict, margin: float = 0.05) -> dict[str, bool]:
    comparisons = [
        paired_bootstrap(metric, source[metric], artifact[metric], samples=300)
        for metric in sorted(source)
    ]
    gates = judge_gates(
        default_gates(comparisons, 0.03, margin), {c.metric: c for c in comparisons}, {}
    )
    return {f"{g.metric} {g.rule.split()[0]}": g.passed for g in gates}


def _rows(values: list[float]) -> dict[str, tuple[float, float]]:
    return {str(i): (v, 1.0) for i, v in enumerate(values)}


def test_a_close_artifact_passes_and_a_worse_one_fails_by_gate() -> None:
    # Perplexity rows are (log-likelihood, units): exp(2.0) against exp(2.01), +1%.
    source = {
        "ppl/perplexity": _rows([-2.0] * 40),
        "answers/rouge_l": _rows([0.5, 0.4, 0.6, 0.3] * 10),
    }
    close = {
        "ppl/perplexity": _rows([-2.01] * 40),
        "answers/rouge_l": _rows([0.5, 0.4, 0.6, 0.31] * 10),
    }
    assert _judge(source, close) == {
        "answers/rouge_l non_inferiority_margin": True,
        "ppl/perplexity max_drop": True,
    }
    # +5% perplexity (exp(0.05)) and every answer 0.1 worse: both gates fail.
    worse = {
        "ppl/perplexity": _rows([-2.05] * 40),
        "answers/rouge_l": _rows([0.4, 0.3, 0.5, 0.2] * 10),
    }
    assert _judge(source, worse) == {
        "answers/rouge_l non_inferiority_margin": False,
        "ppl/perplexity max_drop": False,
    }
    # A wider margin lets the same drop through.
    assert _judge(source, worse, margin=0.15)["answers/rouge_l non_inferiority_margin"]


def test_the_new_gate_fields_are_left_out_of_the_dump_at_their_defaults() -> None:
    source = {"type": "quantized", "from": "tiny@1", "quantization": "q8_0"}
    assert QuantizedSource.model_validate(source).model_dump(mode="json", by_alias=True)[
        "gate"
    ] == {"max_perplexity_increase": 0.03, "min_token_agreement": 0.9}
    gate = QuantizeGate(suite="support-regression", non_inferiority_margin=0.1)
    assert gate.model_dump()["suite"] == "support-regression"
    assert gate.model_dump()["non_inferiority_margin"] == 0.1


def test_an_unknown_gate_suite_is_a_diagnostic_on_its_field(tmp_path: Path) -> None:
    models = tmp_path / "specs/models"
    models.mkdir(parents=True)
    (models / "tiny.yaml").write_text(model_spec("tiny", {"type": "local", "path": "m"}))
    (tmp_path / "m").mkdir()
    source = {"type": "quantized", "from": "tiny@1", "quantization": "q8_0"}
    source["gate"] = {"suite": "support-regresion"}  # type: ignore[assignment]
    (models / "q.yaml").write_text(model_spec("q", source))
    loaded = load_desired(tmp_path)
    assert loaded.desired is None
    text = "\n".join(d.render() for d in loaded.diagnostics)
    assert "spec.source.gate.suite" in text and "unknown EvalSuite 'support-regresion'" in text
