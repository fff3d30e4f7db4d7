"""Reports, model cards: a Hugging Face README.md for every registered version."""

from __future__ import annotations

import io
import json
from typing import Any

from ruamel.yaml import YAML

from controller import installed_version
from controller.report.escape import cell, code
from controller.state.registry.schema import VersionRow


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1000
    return f"{n} B"


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _front_matter(version: VersionRow, base_ref: str | None) -> str:
    """The YAML front matter: license, base_model, tags and the model-index of metrics."""
    front: dict[str, Any] = {"library_name": "transformers"}
    if version.license:
        front["license"] = version.license
    if base_ref:
        front["base_model"] = base_ref
    front["tags"] = [
        "llmops",
        *(
            f"{t.key}:{t.value}" if t.value else t.key
            for t in sorted(version.tags, key=lambda t: t.key)
        ),
    ]
    if version.metrics:
        by_suite: dict[str, list[dict[str, Any]]] = {}
        for metric in sorted(version.metrics, key=lambda m: (m.suite, m.name)):
            by_suite.setdefault(metric.suite, []).append(
                {"type": metric.name, "value": round(metric.value, 6)}
            )
        front["model-index"] = [
            {
                "name": version.model.name,
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"name": suite, "type": suite},
                        "metrics": metrics,
                    }
                    for suite, metrics in by_suite.items()
                ],
            }
        ]
    stream = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.dump(front, stream)
    return stream.getvalue().rstrip()


def _details(version: VersionRow) -> list[str]:
    """The model details table, the source and the files."""
    aliases = sorted(a.name for a in version.model.aliases if a.version_id == version.id)
    return [
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {cell(version.architecture or '-')}"
        f" ({cell(version.model_type or '-')}) |",
        f"| parameters | {_params(version.parameters)} ({version.parameters or 0:,}) |",
        f"| dtype | {cell(version.dtype or '-')} |",
        f"| quantization | {cell(version.quantization or 'none')}"
        + (
            f" (source: {cell(version.extra['source_quantization'])})"
            if version.extra.get("source_quantization")
            else ""
        )
        + " |",
        f"| context length | {version.context_length or '-'} |",
        f"| vocabulary | {version.vocab_size or '-'} |",
        f"| chat template | {'yes' if version.chat_template else 'no'} |",
        f"| license | {cell(version.license or 'unknown')} |",
        f"| size on disk | {_size(version.size_bytes)} |",
        f"| aliases | {cell(', '.join(aliases) or '-')} |",
        f"| spec digest | {code(version.spec_digest or '-')} |",
        f"| registered by | llmops {installed_version()} |",
        "",
        "## Source",
        "",
        "```json",
        json.dumps(version.source, indent=2, sort_keys=True),
        "```",
        "",
        "## Files",
        "",
        "| file | size | sha256 |",
        "|---|---|---|",
        *(f"| {cell(f.path)} | {_size(f.size)} | {code(f.sha256)} |" for f in version.files),
        "",
    ]


def _lineage(version: VersionRow, base_ref: str | None) -> list[str]:
    """Where the version came from: base model, dataset version, run, commit, seeds."""
    lineage = version.lineage
    lines = ["## Lineage", ""]
    if not lineage:
        return [*lines, "Imported from its source; no training lineage."]
    for label, value in (
        ("base model", base_ref),
        ("dataset version", lineage.dataset_version),
        ("experiment run", lineage.experiment_run),
        ("git commit", lineage.git_commit),
        ("config digest", lineage.config_digest),
        ("seeds", lineage.seeds or None),
        ("packages", lineage.packages or None),
    ):
        if value:
            lines.append(f"- {label}: {cell(value, limit=400)}")
    return lines


def _evaluation(version: VersionRow) -> list[str]:
    """The metrics table, or a line saying the version is not evaluated yet."""
    lines = ["## Evaluation", ""]
    if not version.metrics:
        return [*lines, "Not evaluated yet."]
    lines += ["| suite | metric | value |", "|---|---|---|"]
    lines += [
        f"| {cell(m.suite)} | {cell(m.name)} | {m.value:.4f} |"
        for m in sorted(version.metrics, key=lambda m: (m.suite, m.name))
    ]
    return lines


def _use(name: str, number: int) -> list[str]:
    """How to load the version's files."""
    return [
        "## Use",
        "",
        f"`llmops models show {name}@{number} --path` prints the folder with this "
        "version's files; load it with transformers:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```",
        "",
    ]


def render_card(version: VersionRow, base_ref: str | None = None) -> str:
    """Front matter (license, base_model, tags, model-index) then readable sections."""
    name = version.model.name
    lines = [
        "---",
        _front_matter(version, base_ref),
        "---",
        "",
        f"# {cell(name)} (version {version.number})",
        "",
    ]
    if version.model.description:
        lines += [version.model.description, ""]
    lines += _details(version)
    lines += _lineage(version, base_ref)
    lines += ["", *_evaluation(version)]
    lines += ["", *_use(name, version.number)]
    return "\n".join(lines)
