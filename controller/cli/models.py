"""CLI `llmops models`: pull, list, show, rm, gc, verify, du, outdated."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress
from rich.table import Table

from controller.api import split_ref
from controller.api.deployment import DeploymentSpec
from controller.api.model import ExperimentSource, HubSource, ModelSpec
from controller.apply.evaluate import Evaluator
from controller.apply.pull import pull_model
from controller.cli.common import (
    Exit,
    JsonOption,
    RootOption,
    console,
    err_console,
    fail,
    load_or_exit,
    open_registry_or_fail,
    resolve_root,
    unknown,
)
from controller.load.diagnostics import did_you_mean
from controller.load.loader import load_specs
from controller.state.apply_mutex import ApplyBusy, exclusive_apply
from controller.state.artifacts.gc import StoreGc, find_garbage
from controller.state.artifacts.gc import remove as remove_garbage
from controller.state.lockfile import LOCK_FILE, DeploymentOutputs, read_lock
from controller.state.paths import StatePaths
from controller.state.registry.maintenance import collect_garbage, disk_usage, remove_version
from controller.state.registry.maintenance import verify as run_verify
from controller.state.registry.store import Registry
from runners.pull import PullError

models_app = typer.Typer(
    help="Manage local models: the registry and its blob store.", no_args_is_help=True
)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def version_json(version: Any) -> dict[str, Any]:
    aliases = sorted(a.name for a in version.model.aliases if a.version_id == version.id)
    lineage = version.lineage
    return {
        "name": version.model.name,
        "version": version.number,
        "ref": f"{version.model.name}@{version.number}",
        "aliases": aliases,
        "created_at": version.created_at.isoformat() if version.created_at else None,
        "architecture": version.architecture,
        "model_type": version.model_type,
        "parameters": version.parameters,
        "dtype": version.dtype,
        "quantization": version.quantization,
        "source_quantization": version.extra.get("source_quantization"),
        "context_length": version.context_length,
        "vocab_size": version.vocab_size,
        "license": version.license,
        "chat_template": version.chat_template,
        "size_bytes": version.size_bytes,
        "spec_digest": version.spec_digest,
        "source": version.source,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in version.files],
        "tags": {t.key: t.value for t in version.tags},
        "lineage": None
        if lineage is None
        else {
            "base_version_id": lineage.base_version_id,
            "dataset_version": lineage.dataset_version,
            "experiment_run": lineage.experiment_run,
            "git_commit": lineage.git_commit,
            "config_digest": lineage.config_digest,
            "packages": lineage.packages,
            "seeds": lineage.seeds,
        },
        "metrics": [
            {"suite": m.suite, "name": m.name, "value": m.value}
            for m in sorted(version.metrics, key=lambda m: (m.suite, m.name))
        ],
    }


@models_app.command("pull")
def pull(
    names: Annotated[
        list[str] | None, typer.Argument(help="Model spec names; all when empty.")
    ] = None,
    root: RootOption = None,
    force: Annotated[bool, typer.Option(help="Fetch again even when stored.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Import Model specs into the registry.

    A model already stored is not fetched again."""
    top = resolve_root(root)
    loaded = load_or_exit(top)
    models = {
        r.name: r
        for r, spec in loaded.desired.specs(ModelSpec)
        if not isinstance(spec.source, ExperimentSource)
    }
    wanted = names or sorted(models)
    missing = [n for n in wanted if n not in models]
    if missing:
        raise unknown("Model", missing[0], models)
    registry = open_registry_or_fail(top)
    results = []
    failed = False
    for name in wanted:
        source = models[name].spec_as(ModelSpec).source
        evaluator = None
        if getattr(getattr(source, "gate", None), "suite", None):
            evaluator = Evaluator(loaded, registry, err_console)
        try:
            outcome = pull_model(
                models[name], registry, top, err_console, force=force, evaluator=evaluator
            )
        except PullError as err:
            err_console.print(f"error: {name}: {err}", style="red", soft_wrap=True)
            failed = True
            continue
        results.append({"name": name, "status": outcome.status, "ref": outcome.ref})
        if not as_json:
            verb = {
                "present": "already stored as",
                "linked": "registered (files shared) as",
                "imported": "imported as",
            }[outcome.status]
            console.print(f"{name}: {verb} [bold]{outcome.ref}[/bold]")
    if as_json:
        print(json.dumps(results, indent=2))
    raise typer.Exit(Exit.FAILED if failed else Exit.OK)


@models_app.command("list")
def list_models(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Every stored version with its metadata."""
    registry = open_registry_or_fail(resolve_root(root))
    versions = [v for m in registry.models() for v in m.versions]
    if as_json:
        print(json.dumps([version_json(v) for v in versions], indent=2))
        return
    table = Table(title="models")
    for column in (
        "model",
        "aliases",
        "architecture",
        "params",
        "dtype",
        "context",
        "vocab",
        "license",
        "chat",
        "size",
        "created",
    ):
        table.add_column(column)
    for v in versions:
        aliases = ",".join(sorted(a.name for a in v.model.aliases if a.version_id == v.id))
        table.add_row(
            f"{v.model.name}@{v.number}",
            aliases or "-",
            v.architecture or "-",
            _params(v.parameters),
            v.dtype or "-",
            str(v.context_length or "-"),
            str(v.vocab_size or "-"),
            v.license or "-",
            "yes" if v.chat_template else "no",
            _size(v.size_bytes),
            v.created_at.strftime("%Y-%m-%d %H:%M") if v.created_at else "-",
        )
    console.print(table if versions else "no models yet; run 'llmops models pull'")


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="name, name@version or name@alias")],
    root: RootOption = None,
    as_json: JsonOption = False,
    card: Annotated[bool, typer.Option(help="Print the model card.")] = False,
    path: Annotated[bool, typer.Option(help="Print the folder with the files.")] = False,
) -> None:
    """One version: metadata, files, lineage, metrics, card or folder."""
    registry = open_registry_or_fail(resolve_root(root))
    version = registry.find(ref)
    if version is None:
        names = [m.name for m in registry.models()]
        hint = did_you_mean(split_ref(ref)[0], names)
        raise fail(f"no model version '{ref}'" + (f"; {hint}" if hint else ""))
    if path:
        print(registry.materialize(version))
    elif card:
        print(version.card)
    elif as_json:
        print(json.dumps(version_json(version), indent=2))
    else:
        data = version_json(version)
        table = Table(show_header=False, title=data["ref"])
        for key in (
            "aliases",
            "architecture",
            "model_type",
            "parameters",
            "dtype",
            "quantization",
            "source_quantization",
            "context_length",
            "vocab_size",
            "license",
            "chat_template",
            "size_bytes",
            "spec_digest",
            "created_at",
        ):
            value = data[key]
            if key == "parameters" and value:
                value = f"{value:,} ({_params(value)})"
            if key == "size_bytes":
                value = _size(value)
            table.add_row(key, str(value if value not in (None, []) else "-"))
        console.print(table)
        files = Table(title="files")
        for column in ("path", "size", "sha256"):
            files.add_column(column)
        for f in data["files"]:
            files.add_row(f["path"], _size(f["size"]), f["sha256"])
        console.print(files)


def _deployment_refs(root: Path) -> dict[str, list[str]]:
    """Each deployment's model references: what its spec names and what the lock says it
    serves (a spec that no longer loads still has its served version protected), and the
    LoRA adapters it serves beside the model (their base is protected through them)."""
    refs: dict[str, list[str]] = {}
    for spec in load_specs(root).specs:
        if isinstance(deployment := spec.resource.spec, DeploymentSpec):
            refs.setdefault(spec.name, []).extend([deployment.model, *deployment.adapters])
    for address, entry in read_lock(root / LOCK_FILE).entries("Deployment"):
        if isinstance(entry.outputs, DeploymentOutputs) and entry.outputs.version:
            refs.setdefault(address.name, []).append(entry.outputs.version)
            adapters = (entry.spec or {}).get("adapters") or []
            refs[address.name].extend(str(ref) for ref in adapters)
    return refs


@models_app.command("rm")
def remove(
    ref: Annotated[str, typer.Argument(help="name@version")],
    root: RootOption = None,
    force: Annotated[bool, typer.Option(help="Remove even if a deployment uses it.")] = False,
) -> None:
    """Remove one version (its blobs stay until 'llmops models gc')."""
    top = resolve_root(root)
    registry = open_registry_or_fail(top)
    removed = remove_version(registry, ref, _deployment_refs(top), force=force)
    console.print(f"removed {removed}; run 'llmops models gc' to free its files")


@models_app.command("gc")
def gc(
    root: RootOption = None,
    dry_run: Annotated[bool, typer.Option(help="Only report.")] = False,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="Keep unreferenced files written in the last N minutes: a pull or training "
            "run outside apply registers its files only after storing them.",
        ),
    ] = 60.0,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Fail (exit 4) when an apply is running.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete stored files that no version references.

    Only files older than --grace minutes are deleted.

    Runs under the apply mutex: it waits for a running apply (or pipeline run), or exits 4
    with --no-wait, so it never deletes what an apply has stored and not yet registered."""
    top = resolve_root(root)
    registry = open_registry_or_fail(top)

    def waiting(who: str) -> None:
        err_console.print(f"waiting for a running apply to finish ({who}) ...")

    try:
        with exclusive_apply(StatePaths.for_repo(top).root, wait=not no_wait, on_wait=waiting):
            report = collect_garbage(registry, dry_run=dry_run, grace_s=grace * 60)
            in_store = store_garbage(registry, dry_run, grace * 60)
    except ApplyBusy as err:
        err_console.print(f"error: {err}", style="red", soft_wrap=True)
        raise typer.Exit(Exit.BUSY) from err
    if as_json:
        print(
            json.dumps(
                {
                    "removed": report.removed,
                    "freed_bytes": report.freed,
                    "kept_young": report.kept_young,
                    "grace_minutes": grace,
                    "dry_run": dry_run,
                    "store": None
                    if in_store is None
                    else {
                        "removed": [key for key, _ in in_store.garbage],
                        "freed_bytes": in_store.size,
                        "kept_young": in_store.kept_young,
                    },
                },
                indent=2,
            )
        )
        return
    verb = "would free" if dry_run else "freed"
    young = (
        f"; kept {report.kept_young} written in the last {grace:g} min (--grace)"
        if report.kept_young
        else ""
    )
    console.print(
        f"{len(report.removed)} unreferenced blob(s); {verb} {_size(report.freed)}{young}"
    )
    if in_store is not None:
        for key, size in in_store.garbage:
            console.print(f"  {'would remove' if dry_run else 'removed'} {key} ({_size(size)})")
        young = f"; kept {in_store.kept_young} younger than --grace" if in_store.kept_young else ""
        console.print(
            f"store {registry.blobs.store.url}: {len(in_store.garbage)} unreferenced "
            f"object(s); {verb} {_size(in_store.size)}{young}"
        )


def store_garbage(registry: Registry, dry_run: bool, grace_s: float) -> StoreGc | None:
    """The store's objects nothing references (controller/state/artifacts/gc.py), removed
    unless `dry_run`; None without a store."""
    store = registry.blobs.store
    if store is None:
        return None
    versions = {
        f"{name}@{number}"
        for name, rows in registry.version_digests().items()
        for number, _ in rows
    }
    found = find_garbage(store, registry.referenced_blobs(), versions, grace_s)
    if not dry_run:
        remove_garbage(store, found)
    return found


@models_app.command("verify")
def verify(
    names: Annotated[list[str] | None, typer.Argument()] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-hash stored files against their sha256; exit 1 on a problem."""
    registry = open_registry_or_fail(resolve_root(root))
    total = sum(b.size for b in registry.blobs)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task("verifying", total=total)
        report = run_verify(registry, names, lambda n: progress.advance(task, n))
    if as_json:
        print(
            json.dumps(
                {
                    "files": report.checked_files,
                    "bytes": report.checked_bytes,
                    "problems": [p.__dict__ for p in report.problems],
                    "unproven": report.unproven,
                },
                indent=2,
            )
        )
    else:
        for p in report.problems:
            err_console.print(f"{p.ref}: {p.path}: {p.problem}", style="red")
        for ref in report.unproven:
            err_console.print(
                f"{ref}: trusted but records no provenance (commit, code digest, ref); "
                "stored before provenance or by 'llmops models pull'",
                style="yellow",
            )
        console.print(
            f"checked {report.checked_files} file(s), {_size(report.checked_bytes)}: "
            f"{len(report.problems)} problem(s)"
        )
    raise typer.Exit(Exit.FAILED if report.problems else Exit.OK)


@models_app.command("du")
def du(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Disk usage per version, with what it shares with others."""
    rows, stored, logical = disk_usage(open_registry_or_fail(resolve_root(root)))
    if as_json:
        print(
            json.dumps(
                {
                    "versions": [r.__dict__ for r in rows],
                    "stored_bytes": stored,
                    "logical_bytes": logical,
                },
                indent=2,
            )
        )
        return
    table = Table(title="disk usage")
    for column in ("model", "files", "size", "only here"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for r in rows:
        table.add_row(r.ref, str(r.files), _size(r.size), _size(r.unique))
    console.print(table)
    console.print(
        f"stored {_size(stored)} for {_size(logical)} of versions "
        f"(saved {_size(logical - stored)} by sharing files)"
    )


@models_app.command("outdated")
def outdated(root: RootOption = None, as_json: JsonOption = False) -> None:
    """Hub models whose upstream moved past the pinned revision."""
    top = resolve_root(root)
    rows = []
    for spec in load_specs(top).specs:
        model = spec.resource.spec
        if not isinstance(model, ModelSpec) or not isinstance(model.source, HubSource):
            continue
        source = model.source
        rows.append(
            {
                "name": spec.name,
                "repo": source.repo,
                "pinned": source.revision,
                **_upstream(source.repo),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no Hub models in the specs")
        return
    for row in rows:
        if row["upstream"] is None:
            console.print(f"{row['name']}: cannot check {row['repo']}: {row['error']}")
        elif row["upstream"] == row["pinned"]:
            console.print(f"{row['name']}: up to date at {row['pinned'][:12]}")
        else:
            console.print(
                f"{row['name']}: [yellow]upstream moved[/yellow] "
                f"{row['pinned'][:12]} -> {row['upstream'][:12]}; change 'revision' "
                "in the spec to update"
            )


def _upstream(repo: str) -> dict[str, Any]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return {"upstream": None, "error": "offline (HF_HUB_OFFLINE is set)"}
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(repo, timeout=10)
    except (HfHubHTTPError, OSError, ValueError) as err:
        return {"upstream": None, "error": str(err).splitlines()[0]}
    except Exception as err:
        return {"upstream": None, "error": f"{type(err).__name__}: {err}"}
    return {"upstream": info.sha, "error": None}
