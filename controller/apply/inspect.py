"""Apply, brain scan: scan a registered version against its base, stored and reused by digest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from controller.apply.arena import version_identity
from controller.state.lockfile import ScanSummary
from controller.state.registry.arena import ScanStore
from controller.state.registry.schema import VersionRow
from controller.state.registry.store import Registry
from runners.errors import InvalidInput

SCAN_FILE = "scan.json"


@dataclass
class ScanOutcome:
    status: Literal["cached", "scanned"]
    ref: str
    against: str | None
    result: dict[str, Any]
    folder: Path

    def summary(self) -> ScanSummary:
        alarms = self.result.get("alarms") or []
        return ScanSummary(
            digest=self.result["digest"],
            against=self.against,
            modules_changed=list(self.result.get("modules_changed") or []),
            layers_changed_most=[
                int(row["layer"]) for row in (self.result.get("layers_changed_most") or [])[:3]
            ],
            alarms=[f"{a['severity']}: {a['reason']}" for a in alarms][:10],
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [a for a in self.result.get("alarms") or [] if a.get("severity") == "error"]


def stored_summary(result: dict[str, Any], against: str | None, top: int = 10) -> dict[str, Any]:
    """What the registry keeps of a scan for the dashboard: alarms (one per phenomenon), what
    the base has too (context), what changed (top modules, layers and neurons), and per
    picture the cells outside its colour scale."""
    changes = result.get("changes") or {}
    return {
        "against": against,
        "alarms": result.get("alarms") or [],
        "context": result.get("context") or [],
        "changes": {
            "modules": (changes.get("modules") or [])[:top],
            "layers": (changes.get("layers") or [])[:top],
            "neurons": (changes.get("neurons") or [])[:top],
            "neurons_note": changes.get("neurons_note"),
        },
        "clipped": {
            f"{name}.png": grid["limits"]["text"]
            for name, grid in (result.get("heatmaps") or {}).items()
            if (grid.get("limits") or {}).get("text")
        },
        "modules_changed": result.get("modules_changed") or [],
        "layers_changed_most": (result.get("layers_changed_most") or [])[:5],
    }


def read_probes(path: Path) -> list[str]:
    """Probe prompts: one per line of a text file, or 'prompt'/'question' of JSONL rows."""
    if not path.is_file():
        raise InvalidInput(f"probe file {path} does not exist; give a text or JSONL file")
    probes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidInput(f"{path}:{number}: not JSON ({err.msg})") from err
            text = row.get("prompt") or row.get("question") if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise InvalidInput(
                    f"{path}:{number}: a probe row needs a 'prompt' or 'question' string"
                )
            probes.append(text)
        else:
            probes.append(line.strip())
    if not probes:
        raise InvalidInput(f"probe file {path} has no prompts")
    return probes


def base_of(registry: Registry, version: VersionRow) -> VersionRow | None:
    """The version a fine-tune was trained from (its lineage), if the registry knows it."""
    base_id = version.lineage.base_version_id if version.lineage else None
    if base_id is None:
        return None
    return registry.by_id(base_id)


class Inspector:
    """Scans versions of one registry; a scan with the same inputs is read back, not redone."""

    def __init__(self, registry: Registry, console: Console) -> None:
        self.registry = registry
        self.console = console
        self.store = ScanStore(registry)

    def scan(
        self,
        version: VersionRow,
        against: VersionRow | None,
        probes: list[str] | None = None,
        options: dict[str, Any] | None = None,
        force: bool = False,
    ) -> ScanOutcome:
        from runners.inspect.scan import ScanInputs, scan, scan_digest

        options = dict(options or {})
        ref = f"{version.model.name}@{version.number}"
        against_ref = f"{against.model.name}@{against.number}" if against else None
        is_adapter = any(t.key == "kind" and t.value == "adapter" for t in version.tags or [])
        if is_adapter and against is None:
            raise InvalidInput(f"{ref} is a LoRA adapter: scan it --against its base model version")
        digest = scan_digest(
            version_identity(version),
            version_identity(against) if against else None,
            probes,
            options,
        )
        folder = self.registry.paths.scans(version.model.name, version.number) / digest[7:23]
        found = None if force else self.store.find(digest)
        if found is not None and SCAN_FILE in found.files:
            result = json.loads(self.registry.blobs.read_text(found.files[SCAN_FILE]))
            self._restore(found.files, folder)
            return ScanOutcome("cached", ref, against_ref, result, folder)
        self.console.print(f"  scanning {ref}" + (f" against {against_ref}" if against_ref else ""))
        result = scan(
            ScanInputs(
                model=self.registry.materialize(version),
                base=self.registry.materialize(against) if against else None,
                probes=probes,
                out=folder,
                top_k=int(options.get("top_k", 5)),
                spread_k=float(options.get("spread_k", 6.0)),
                weightwatcher=bool(options.get("weightwatcher", False)),
                report=lambda text: self.console.print(f"    {text}"),
            )
        )
        result["digest"] = digest
        (folder / SCAN_FILE).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
        files = {
            path.name: self.registry.blobs.put(path).sha256
            for path in sorted(folder.iterdir())
            if path.is_file()
        }
        self.store.add(
            digest,
            version.id,
            against.id if against else None,
            stored_summary(result, against_ref),
            files,
        )
        return ScanOutcome("scanned", ref, against_ref, result, folder)

    def _restore(self, files: dict[str, str], folder: Path) -> None:
        """Put a stored scan's files (pictures, JSON) back where people and the UI look."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, sha in files.items():
            target = folder / name
            if not target.is_file():
                target.write_bytes(self.registry.blobs.local(sha).read_bytes())
