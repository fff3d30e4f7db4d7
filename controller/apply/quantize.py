"""Apply, model quantize: a Model spec with a `quantized` source -> a GGUF registry version,
derived from another registered version and registered only when its quality gate passes."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from controller.api.model import ModelSpec, QuantizedSource
from controller.plan.types import DesiredResource
from controller.report.model_card import render_card
from controller.state.blobs import Blob
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import VERSION_FIELDS, NewVersion, Registry
from runners.errors import LlmopsError
from runners.pull import PullError
from runners.quantize import DEFAULT_TEXTS, GateResult, export_gguf, quality_gate, read_texts

if TYPE_CHECKING:
    from controller.apply.evaluate import Comparison, Evaluator

GATE_SUITE = "quantize-gate"


class QuantizeGateFailed(LlmopsError):
    """The quantized artifact is worse than its source beyond the gate's margins; not registered."""


def quantize_key(origin: VersionRow, source: QuantizedSource, suite_digest: str = "") -> str:
    """What decides the artifact's bytes and verdict: the source version's files, the type
    and the gate (with the digest of the suite it runs, if any)."""
    files = sorted((f.path, f.sha256) for f in origin.files)
    document: dict[str, Any] = {
        "files": files,
        "source": source.model_dump(mode="json", by_alias=True),
    }
    if suite_digest:
        document["suite_digest"] = suite_digest
    text = json.dumps(document, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def quantize_model(
    resource: DesiredResource,
    registry: Registry,
    repo_root: Path,
    console: Console,
    force: bool = False,
    evaluator: Evaluator | None = None,
) -> tuple[Literal["present", "imported"], VersionRow]:
    """Export, quantise and gate; ('present' | 'imported', the registered version). A gate
    that runs an EvalSuite needs `evaluator` (apply's, or `llmops models pull`'s)."""
    spec = resource.spec_as(ModelSpec)
    source = spec.source
    assert isinstance(source, QuantizedSource)
    name = resource.name
    origin = registry.find(source.from_)
    if origin is None:
        raise PullError(
            f"Model {name}: source.from '{source.from_}' is not in the registry; apply or pull "
            "that model first"
        )
    suite = source.gate.suite
    if suite and evaluator is None:
        raise PullError(
            f"Model {name}: its gate runs EvalSuite {suite} (spec.source.gate.suite); "
            f"derive it with 'llmops apply' or 'llmops models pull {name}'"
        )
    key = quantize_key(origin, source, evaluator.digest(suite) if suite and evaluator else "")
    existing = None if force else registry.find_by(name, source_key=key)
    if existing is not None and registry.has_files(existing):
        registry.materialize(existing)
        return "present", existing
    folder = registry.materialize(origin)
    origin_ref = f"{origin.model.name}@{origin.number}"
    work = registry.paths.work / f"quantize-{name}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        filename = f"{name}.{source.quantization}.gguf"
        console.print(f"  quantizing {origin_ref} to GGUF {source.quantization}")
        artifact = export_gguf(folder, work / filename, source.quantization, name=name)
        gate = _gate(name, source, origin_ref, folder, artifact, repo_root, console)
        compared = None
        if suite and evaluator is not None:
            compared = evaluator.quantize_gate(
                suite,
                origin_ref,
                folder,
                artifact,
                name,
                f"{name} ({source.quantization}, llama.cpp)",
                source.gate.max_perplexity_increase,
                source.gate.non_inferiority_margin,
                work,
            )
        failed = _text_gates_enforced(source, gate, compared) + [
            f"{g.metric} {g.rule}: {g.detail}"
            for g in (compared[0].gates if compared else [])
            if not g.passed
        ]
        if failed:
            raise QuantizeGateFailed(
                f"Model {name}: {source.quantization} of {origin_ref} failed gate(s) "
                f"{'; '.join(failed)}; not registered (loosen spec.source.gate, or pick a "
                "wider quantization)"
            )
        version = _register(resource, registry, origin, key, artifact, gate, compared)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        registry.blobs.clean_tmp()
    found = registry.by_id(version.id) or version
    registry.set_card(found.id, render_card(found, base_ref=origin_ref))
    found = registry.find(f"{name}@{found.number}") or found
    registry.materialize(found)
    return "imported", found


def _text_gates_enforced(
    source: QuantizedSource, gate: GateResult, compared: tuple[Comparison, Any] | None
) -> list[str]:
    """The fixed-text gates that decide: all of them without a suite. With one, the suite
    decides; the texts' token agreement still does when the spec sets min_token_agreement,
    and their perplexity when the suite measures none."""
    if compared is None:
        return list(gate.failed)
    measured = {c.metric.split("/")[-1] for c in compared[0].metrics}
    kept = []
    if "min_token_agreement" in source.gate.model_fields_set:
        kept.append("token-agreement:")
    if not measured & {"perplexity", "word_perplexity"}:
        kept.append("perplexity:")
    return [f for f in gate.failed if f.startswith(tuple(kept))]


def _gate(
    name: str,
    source: QuantizedSource,
    origin_ref: str,
    folder: Path,
    artifact: Path,
    repo_root: Path,
    console: Console,
) -> GateResult:
    """Score the artifact against its source on the fixed texts (the verdict is the caller's)."""
    texts = read_texts(repo_root / source.gate.texts) if source.gate.texts else DEFAULT_TEXTS
    gate = quality_gate(
        folder,
        artifact,
        texts,
        max_perplexity_increase=source.gate.max_perplexity_increase,
        min_token_agreement=source.gate.min_token_agreement,
    )
    numbers = gate.as_dict()
    console.print(
        f"  gate: perplexity {numbers['artifact_perplexity']} vs "
        f"{numbers['source_perplexity']} ({numbers['perplexity_increase']:+.3%}), "
        f"token agreement {numbers['token_agreement']:.2%}"
    )
    return gate


def _register(
    resource: DesiredResource,
    registry: Registry,
    origin: VersionRow,
    key: str,
    artifact: Path,
    gate: GateResult,
    compared: tuple[Comparison, dict[str, Any]] | None = None,
) -> VersionRow:
    """Store the artifact as a version of its own, lineage to its source, the gate's numbers
    as metrics of suite `quantize-gate`; with a suite gate, its comparison and verdicts in
    `quality_gate.suite` and the artifact's numbers as metrics of that suite."""
    spec = resource.spec_as(ModelSpec)
    source = spec.source
    assert isinstance(source, QuantizedSource)
    blob: Blob = registry.blobs.put(artifact)
    metadata = {k: getattr(origin, k) for k in VERSION_FIELDS}
    metadata.update(
        quantization=source.quantization,
        dtype=None,
        size_bytes=blob.size,
        format="gguf",
        gguf_file=artifact.name,
        quantized_from=f"{origin.model.name}@{origin.number}",
        quality_gate=gate.as_dict(),
    )
    if compared is not None:
        # Registered, so the gates that decide passed; a fixed-text miss that did not decide
        # (_text_gates_enforced) stays on record.
        metadata["quality_gate"].update(passed=True, failed=[], texts_failed=list(gate.failed))
        metadata["quality_gate"]["suite"] = _rounded(
            {
                **compared[0].as_dict(),
                "metrics": [
                    {k: v for k, v in m.as_dict().items() if k != "flipped"}
                    for m in compared[0].metrics
                ],
            }
        )
    version = registry.register(
        NewVersion(
            name=resource.name,
            files=[(artifact.name, blob)],
            metadata=metadata,
            spec_digest=resource.digest,
            source_key=key,
            source=source.model_dump(mode="json", by_alias=True),
            aliases=list(spec.aliases),
            description=spec.description,
            lineage={"base_version_id": origin.id},
            tags={"kind": "gguf", "quantization": source.quantization},
        )
    )
    registry.add_metrics(
        version.id,
        GATE_SUITE,
        key,
        {
            "source_perplexity": gate.source_perplexity,
            "perplexity": gate.artifact_perplexity,
            "perplexity_increase": gate.perplexity_increase,
            "token_agreement": gate.token_agreement,
        },
    )
    if compared is not None:
        comparison, summary = compared
        measured = {k: v for k, v in summary["metrics"].items() if v is not None}
        registry.add_metrics(version.id, comparison.suite, key, measured)
    return version


def _rounded(value: Any) -> Any:
    """Floats to 6 significant digits, NaN and infinities to None (JSON metadata)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
