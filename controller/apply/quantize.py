"""Apply, model quantize: a Model spec with a `quantized` source -> a GGUF registry version,
derived from another registered version and registered only when its quality gate passes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Literal

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

GATE_SUITE = "quantize-gate"


class QuantizeGateFailed(LlmopsError):
    """The quantized artifact is worse than its source beyond the gate's margins; not registered."""


def quantize_key(origin: VersionRow, source: QuantizedSource) -> str:
    """What decides the artifact's bytes and verdict: the source version's files, the type
    and the gate."""
    files = sorted((f.path, f.sha256) for f in origin.files)
    text = json.dumps(
        {"files": files, "source": source.model_dump(mode="json", by_alias=True)}, sort_keys=True
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def quantize_model(
    resource: DesiredResource,
    registry: Registry,
    repo_root: Path,
    console: Console,
    force: bool = False,
) -> tuple[Literal["present", "imported"], VersionRow]:
    """Export, quantise and gate; ('present' | 'imported', the registered version)."""
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
    key = quantize_key(origin, source)
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
        version = _register(resource, registry, origin, key, artifact, gate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        registry.blobs.clean_tmp()
    found = registry.by_id(version.id) or version
    registry.set_card(found.id, render_card(found, base_ref=origin_ref))
    found = registry.find(f"{name}@{found.number}") or found
    registry.materialize(found)
    return "imported", found


def _gate(
    name: str,
    source: QuantizedSource,
    origin_ref: str,
    folder: Path,
    artifact: Path,
    repo_root: Path,
    console: Console,
) -> GateResult:
    """Score the artifact against its source; QuantizeGateFailed when a margin is exceeded."""
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
    if not gate.passed:
        raise QuantizeGateFailed(
            f"Model {name}: {source.quantization} of {origin_ref} failed gate(s) "
            f"{'; '.join(gate.failed)}; not registered (loosen spec.source.gate, or pick a "
            "wider quantization)"
        )
    return gate


def _register(
    resource: DesiredResource,
    registry: Registry,
    origin: VersionRow,
    key: str,
    artifact: Path,
    gate: GateResult,
) -> VersionRow:
    """Store the artifact as a version of its own, lineage to its source, the gate's numbers
    as metrics of suite `quantize-gate`."""
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
    return version
