"""Apply, dataset prepare: a Dataset spec -> a prepared, DVC-tracked, registered version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controller.api import split_ref
from controller.api.arena import DeploymentContestant, EndpointTarget
from controller.api.dataset import (
    ArenaSource,
    DatasetSource,
    DatasetSpec,
    DecontaminateStep,
    FileSource,
)
from controller.api.evalsuite import EvalSuiteSpec
from controller.apply.context import ApplyStep
from controller.apply.pull import ensure_model
from controller.apply.served import deployment_endpoint
from controller.plan.types import DesiredResource
from controller.state import dvc
from controller.state.provenance import Provenance, accepts
from controller.state.registry.arena import ArenaStore, export_battles
from controller.state.registry.schema import DatasetVersionRow
from controller.state.registry.store import Registry
from runners.arena.fastchat import preference_rows
from runners.data import PrepareError, PrepareInputs, prepare
from runners.data.augment import Teacher
from runners.data.collected import read_collected
from runners.data.preparation import SourceInput, read_split
from runners.pull import PullError

PREPARED_DIR = Path("data/prepared")


@dataclass
class PrepareOutcome:
    status: Literal["cached", "prepared"]
    version: DatasetVersionRow
    folder: Path

    @property
    def stats(self) -> dict[str, Any]:
        return self.version.stats


@dataclass
class ArenaPairs:
    """An Arena's decisive votes as Dataset rows, and the lineage its version records."""

    rows: list[dict[str, Any]]
    lineage: dict[str, Any]


def version_dir(registry: Registry, name: str, version: str) -> Path:
    return registry.paths.dataset_version(name, version)


class Preparer(ApplyStep):
    """Prepares datasets of one loaded repository, pulling the models and datasets they need."""

    def resource(self, name: str) -> DesiredResource:
        return self.desired.resources[f"Dataset/{name}"]

    def prepare(self, name: str, force: bool = False) -> PrepareOutcome:
        resource = self.resource(name)
        spec = resource.spec_as(DatasetSpec)
        arenas = self._arena_pairs(spec)
        lineage = [a.lineage for a in arenas.values()]
        if not force:
            hit = self.registry.datasets.by_resource(name, resource.digest)
            if hit is not None and (hit.stats or {}).get("arenas", []) != lineage:
                self.console.print(f"  {name}: the arena votes changed since; preparing again")
                hit = None
            if hit is not None and self.trust is not None:
                # The trust boundary (controller/state/provenance.py): a version an untrusted
                # ref prepared is reused only under the rule; otherwise it is prepared again.
                ok, why = accepts(
                    self.trust,
                    Provenance.from_dict((hit.stats or {}).get("provenance")),
                    resource.code_version,
                    resource.code_files,
                )
                if not ok:
                    self.console.print(f"  {name}@{hit.version[7:19]} {why}: preparing again")
                    hit = None
            if hit is not None:
                folder = version_dir(self.registry, name, hit.version)
                if not (folder / "stats.json").is_file():
                    self._restore(name, hit, folder)
                if (folder / "stats.json").is_file():
                    self._publish(name, folder, track=False)
                    return PrepareOutcome("cached", hit, folder)
        work = self.registry.paths.work / f"prepare-{name}"
        shutil.rmtree(work, ignore_errors=True)
        inputs = PrepareInputs(
            name=name,
            spec=dict(resource.fields),
            sources=self._sources(spec, arenas),
            out=work,
            eval_texts=self._eval_texts(name, spec),
            tokenizer_path=self._model_path(spec.tokenizer) if spec.tokenizer else None,
            model_paths={ref: self._model_path(ref) for ref in self._step_models(spec)},
            report=lambda text: self.console.print(f"  {text}"),
            teachers=self._teachers(spec),
            request_cache=self.registry.paths.endpoint_requests,
        )
        try:
            result = prepare(inputs)
            folder = version_dir(self.registry, name, result.version)
            if not folder.is_dir():
                folder.parent.mkdir(parents=True, exist_ok=True)
                os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        md5 = self._publish(name, folder, track=True)
        # The spec and inputs recorded here let a later plan say what changed.
        recorded = {
            "spec": dict(resource.fields),
            "inputs": dict(resource.inputs),
            "code_version": resource.code_version,
        }
        row = self.registry.datasets.add(
            name,
            result.version,
            resource.digest,
            result.splits,
            {
                **result.stats,
                "resource": recorded,
                "arenas": lineage,
                **self.provenance(resource.code_version),
            },
            md5,
        )
        return PrepareOutcome("prepared", row, folder)

    def _restore(self, name: str, hit: DatasetVersionRow, folder: Path) -> None:
        """Fetch a version prepared elsewhere from the DVC remote instead of preparing it.

        Only when the committed data/prepared/<name>.dvc names exactly that version.
        """
        dvc_file = self.root / PREPARED_DIR / f"{name}.dvc"
        if not hit.dvc_md5 or not dvc_file.is_file() or dvc.dvc_md5(dvc_file) != hit.dvc_md5:
            return
        try:
            dvc.pull(self.root, dvc_file)
        except dvc.DvcError as err:
            self.console.print(f"  {err}; preparing {name} again")
            return
        source = self.root / PREPARED_DIR / name
        if (source / "stats.json").is_file():
            tmp = folder.with_name(folder.name + ".restore")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, folder)
            self.console.print(f"  restored {name}@{hit.version[7:19]} from the DVC remote")

    def _publish(self, name: str, folder: Path, track: bool) -> str | None:
        """Copy the version to data/prepared/<name>/ and track it with DVC."""
        target = self.root / PREPARED_DIR / name
        same = (
            target.is_dir()
            and all(
                (target / f.name).is_file() and (target / f.name).read_bytes() == f.read_bytes()
                for f in folder.iterdir()
            )
            and len(list(target.iterdir())) == len(list(folder.iterdir()))
        )
        if not same:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(folder, target)
            track = True
        if not track:
            return None
        dvc.ensure_repo(self.root)
        return dvc.track_and_push(self.root, target)

    def _arena_pairs(self, spec: DatasetSpec) -> dict[str, ArenaPairs]:
        """Each named Arena's decisive votes as rows of the Dataset's format, read from the
        registry as `llmops arena export --format dpo` reads them."""
        out: dict[str, ArenaPairs] = {}
        for source in spec.sources:
            if not isinstance(source, ArenaSource) or source.arena in out:
                continue
            battles = ArenaStore(self.registry).battles(source.arena)
            if not battles and f"Arena/{source.arena}" not in self.desired.resources:
                raise PrepareError(
                    f"source 'arena: {source.arena}': no Arena spec has that name and the "
                    "registry holds no votes for it; name an Arena spec, or "
                    "import its votes (llmops arena import FILE --arena NAME)"
                )
            votes = export_battles(battles)
            pairs = preference_rows(votes)
            rows: list[dict[str, Any]] = []
            for number, pair in enumerate(pairs, start=1):
                where = f"arena/{source.arena}:{number}"
                if spec.format == "preference":
                    rows.append({**pair, "_source": where})
                else:
                    rows.append(
                        {
                            "prompt": pair["prompt"],
                            "completion": pair["chosen"],
                            "label": True,
                            "_source": where + "#1",
                        }
                    )
                    rows.append(
                        {
                            "prompt": pair["prompt"],
                            "completion": pair["rejected"],
                            "label": False,
                            "_source": where + "#2",
                        }
                    )
            digest = hashlib.sha256(
                json.dumps(pairs, sort_keys=True, ensure_ascii=False).encode("utf-8")
            ).hexdigest()
            lineage = {
                "arena": source.arena,
                "votes": len(votes),
                "decisive_pairs": len(pairs),
                "pairs_sha256": digest,
            }
            out[source.arena] = ArenaPairs(rows, lineage)
            if not pairs:
                self.console.print(f"  arena '{source.arena}' has no decisive votes yet")
        return out

    def _sources(self, spec: DatasetSpec, arenas: dict[str, ArenaPairs]) -> list[SourceInput]:
        out = []
        for source in spec.sources:
            weight = source.weight
            if isinstance(source, ArenaSource):
                out.append(SourceInput(weight=weight, rows=arenas[source.arena].rows))
            elif isinstance(source, FileSource):
                out.append(
                    SourceInput(
                        weight=weight,
                        path=self.root / source.path,
                        shown=source.path,
                        file_format=source.format,
                        mapping=dict(source.mapping),
                    )
                )
            elif isinstance(source, DatasetSource):
                outcome = self.prepare(split_ref(source.dataset)[0])
                out.append(SourceInput(weight=weight, rows=read_split(outcome.folder, "train")))
            else:  # collected production data: interactions joined with their feedback
                loaded = read_collected(
                    self.registry.paths.collected(source.store),
                    f"collected/{source.store}",
                    spec.format,
                    dict(source.mapping),
                    source.only_positive_feedback,
                )
                if loaded.bad and spec.on_bad_rows == "fail":
                    shown = "\n".join(b.render() for b in loaded.bad[:20])
                    raise PrepareError(
                        f"{len(loaded.bad)} bad row(s) in collected store "
                        f"'{source.store}':\n{shown}\n"
                        "fix them, or set 'on_bad_rows: skip' in the Dataset spec"
                    )
                out.append(SourceInput(weight=weight, rows=loaded.rows))
                if not loaded.rows:
                    self.console.print(f"  collected store '{source.store}' has no rows yet")
        return out

    def _eval_texts(self, name: str, spec: DatasetSpec) -> list[str]:
        steps = [s for s in spec.steps if isinstance(s, DecontaminateStep)]
        if not steps:
            return []
        wanted = set(steps[0].suites)
        texts: list[str] = []
        for loaded_spec in self.loaded.specs:
            suite = loaded_spec.resource.spec
            if not isinstance(suite, EvalSuiteSpec) or (wanted and loaded_spec.name not in wanted):
                continue
            for task in suite.tasks:
                if task.data is None:
                    continue
                if task.data.type == "file":
                    rows = [
                        json.loads(line)
                        for line in (self.root / task.data.path)
                        .read_text(encoding="utf-8")
                        .splitlines()
                        if line.strip()
                    ]
                else:
                    other = split_ref(task.data.dataset)[0]
                    if other == name:
                        continue  # its own held-out split is disjoint by construction
                    rows = read_split(self.prepare(other).folder, task.data.split)
                for row in rows:
                    texts.extend(_strings(row))
        return texts

    @staticmethod
    def _step_models(spec: DatasetSpec) -> set[str]:
        refs = set()
        for step in spec.steps:
            for key in ("tokenizer", "model"):
                ref = getattr(step, key, None)  # the steps that use a model name it so
                if ref:
                    refs.add(ref)
        return refs

    def _teachers(self, spec: DatasetSpec) -> dict[int, Teacher]:
        """Augment steps' teacher endpoints by step index; a Deployment where it runs now."""
        out = {}
        for index, step in enumerate(spec.steps):
            teacher = getattr(step, "endpoint", None)
            field = f"steps[{index}].endpoint"
            if isinstance(teacher, DeploymentContestant):
                served = deployment_endpoint(self.root, teacher.deployment)
                out[index] = Teacher(
                    served.base_url,
                    teacher.deployment,
                    served.key_env,
                    teacher.concurrency,
                    teacher.retries,
                    teacher.timeout_s,
                    serves=served.version,
                    field=field,
                )
            elif isinstance(teacher, EndpointTarget):
                out[index] = Teacher(
                    teacher.base_url,
                    teacher.model,
                    teacher.api_key.env if teacher.api_key else None,
                    teacher.concurrency,
                    teacher.retries,
                    teacher.timeout_s,
                    field=field,
                )
        return out

    def _model_path(self, ref: str) -> Path:
        try:
            return ensure_model(
                ref, dict(self.desired.resources), self.registry, self.root, self.console
            )[1]
        except PullError as err:
            raise PrepareError(str(err)) from err


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
