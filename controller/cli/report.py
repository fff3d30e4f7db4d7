"""CLI `llmops report --base <ref>`: the pull request's report, written and optionally posted."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from controller.cli.common import Exit, RootOption, console, fail, load_or_exit, resolve_root
from controller.plan.address import Address


def lock_at(root: Path, ref: str) -> Any:
    """llmops.lock as of a git ref; an empty lock when that commit has none."""
    from controller.state.lockfile import LOCK_FILE, LockFile, LockFileError, parse_lock

    known = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if known.returncode != 0:
        raise fail(
            f"--base {ref}: no such commit in {root}; fetch it (git fetch origin) or name "
            "another branch, tag or sha",
            Exit.INVALID,
        )
    shown = subprocess.run(
        ["git", "show", f"{ref}:{LOCK_FILE}"], cwd=root, capture_output=True, text=True
    )
    if shown.returncode != 0:
        return LockFile()
    try:
        return parse_lock(shown.stdout, f"{LOCK_FILE} at {ref}")
    except LockFileError as err:
        raise fail(err.diagnostic.render(), Exit.INVALID) from err


def head_name(root: Path) -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "specs"], cwd=root, capture_output=True, text=True
    )
    name = out.stdout.strip() or "HEAD"
    return f"{name} + uncommitted specs" if dirty.stdout.strip() else name


def report_command(
    base: Annotated[str, typer.Option("--base", help="Git ref the pull request merges into.")],
    root: RootOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the Markdown here.")
    ] = None,
    post: Annotated[
        bool,
        typer.Option(
            "--post",
            help="Post as one pull-request comment (updated in place) and set a commit status "
            "per gate; needs GITHUB_TOKEN, GITHUB_REPOSITORY and a pull_request event.",
        ),
    ] = False,
    pull: Annotated[int | None, typer.Option("--pull", help="Pull request number.")] = None,
    sha: Annotated[str | None, typer.Option("--sha", help="Head commit for statuses.")] = None,
) -> None:
    """Markdown for the pull request: plan, metric tables with intervals and gates, loss
    curves, dataset and deployment changes. Exit 1 when a gate failed."""
    from controller.observe.applied import observed_from_lock
    from controller.plan.planner import plan
    from controller.report.markdown import ReportInputs, gate_outcomes, render_report
    from controller.state.lockfile import LOCK_FILE, read_lock

    top = resolve_root(root)
    loaded = load_or_exit(top)
    base_lock = lock_at(top, base)
    head_lock = read_lock(top / LOCK_FILE).resources
    desired = loaded.desired
    assets = (output.parent if output else top / ".llmops" / "reports") / "report-assets"
    inputs = ReportInputs(
        base=base,
        head=head_name(top),
        plan=plan(desired, observed_from_lock(base_lock, source=f"{LOCK_FILE} at {base}")),
        base_lock=base_lock.resources,
        head_lock=head_lock,
        desired={a: r.digest for a, r in desired.resources.items()},
        curves=collect_curves(top, loaded, head_lock, assets, relative_to=assets.parent),
        dataset_diffs=dataset_diffs(top, loaded, base_lock.resources, head_lock),
        deployments={
            a: str(r.spec["model"]) for a, r in desired.resources.items() if r.kind == "Deployment"
        },
    )
    markdown = render_report(inputs)
    target = output or top / ".llmops" / "reports" / "report.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown, encoding="utf-8")
    console.print(f"report written to {target}")
    gates = gate_outcomes(inputs)
    if post:
        from controller.publish import (
            PLAN_CONTEXT,
            GateStatus,
            PublishError,
            context_from_environment,
            gate_context,
            publish,
        )

        statuses = [
            GateStatus(
                # One status per gate rule: a metric may have several (max_drop and min).
                gate_context(g.suite, *g.name.split(" ", 1)[0].split("/", 1))
                + "/"
                + g.name.split(" ")[1],
                "success" if g.passed else "failure",
                f"{g.name}: {g.detail}",
                None,
            )
            for g in gates
        ]
        pending = inputs.plan.has_changes
        statuses.append(
            GateStatus(
                PLAN_CONTEXT,
                "success",
                f"{sum(1 for a in inputs.plan.pending)} change(s) planned"
                if pending
                else "no changes",
                None,
            )
        )
        try:
            posted = publish(
                markdown, statuses, context_from_environment(pull_number=pull, sha=sha)
            )
        except PublishError as err:
            raise fail(str(err)) from err
        console.print(f"report {'posted' if posted.created else 'updated'}: {posted.url}")
    raise typer.Exit(Exit.FAILED if any(not g.passed for g in gates) else Exit.OK)


def collect_curves(
    root: Path, loaded: Any, head_lock: dict[str, Any], assets: Path, relative_to: Path
) -> dict[str, Any]:
    """Loss per step from each trained run's log, its curves.png copied beside the report."""
    from controller.apply.train import run_folder
    from controller.report.markdown import Curve
    from controller.state.blobs import hash_file
    from controller.state.paths import StatePaths


    curves = {}
    for address, resource in loaded.desired.resources.items():
        if resource.kind != "Experiment" or address not in head_lock:
            continue
        run_dir = run_folder(StatePaths.for_repo(root), resource)
        log = run_dir / "log.jsonl"
        if not log.is_file():
            continue
        losses = []
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "step" in record and "event" not in record:
                losses.append(float(record["loss"]))
        image = None
        blob = None
        png = run_dir / "curves.png"
        if png.is_file():
            assets.mkdir(parents=True, exist_ok=True)
            copy = assets / (address.replace("/", "-").lower() + ".png")
            shutil.copyfile(png, copy)
            image = copy.relative_to(relative_to).as_posix()
            blob = f"sha256:{hash_file(png).sha256}"
        curves[address] = Curve(losses, image, blob)
    return curves


def dataset_diffs(
    root: Path, loaded: Any, base_lock: dict[str, Any], head_lock: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Rows added, removed and changed between the base's and this branch's dataset versions,
    where both versions are in the local store."""
    from controller.apply.prepare import read_split, version_dir
    from controller.state.registry.db import RegistryUnavailable
    from controller.workspace import open_registry, registry_exists
    from runners.data.diff import diff_rows

    if not registry_exists(root):
        return {}
    try:
        registry = open_registry(root)
    except RegistryUnavailable:
        return {}
    out = {}
    for address, entry in head_lock.items():
        if entry.kind != "Dataset" or address not in base_lock:
            continue
        old = base_lock[address].outputs.version
        new = entry.outputs.version
        if not old or not new or old == new:
            continue
        name = Address.parse(address).name
        before_dir, after_dir = version_dir(registry, name, old), version_dir(registry, name, new)
        if not (before_dir.is_dir() and after_dir.is_dir()):
            continue
        fmt = (
            loaded.desired.resources[address].spec["format"]
            if address in loaded.desired.resources
            else "text"
        )
        rows_before = [
            r for s in ("train", "validation", "test") for r in read_split(before_dir, s)
        ]
        rows_after = [r for s in ("train", "validation", "test") for r in read_split(after_dir, s)]
        out[address] = diff_rows(rows_before, rows_after, fmt, examples=0)
    return out


def manifest_diffs(
    root: Path, loaded: Any, base_lock: dict[str, Any], head_lock: dict[str, Any]
) -> dict[str, str]:
    """Unified diffs of the KServe manifests a deployment had at the base and will have now."""
    import difflib

    import yaml

    from controller.workspace import open_registry, registry_exists
    from runners.deploy import kserve
    from runners.deploy.release import DeployError, Release

    registry = open_registry(root) if registry_exists(root) else None
    out = {}
    for address, resource in loaded.desired.resources.items():
        if resource.kind != "Deployment":
            continue
        before_entry = base_lock.get(address)
        if before_entry is not None and before_entry.digest == resource.digest:
            continue
        sides = []
        for spec, version in (
            (
                before_entry.spec if before_entry else None,
                before_entry.outputs.version if before_entry else None,
            ),
            (dict(resource.spec), _resolved(registry, str(resource.spec["model"]))),
        ):
            if not spec or spec.get("target") != "kserve":
                sides.append([])
                continue
            try:
                release = Release(resource.name, version or str(spec["model"]), dict(spec))
                manifests = kserve.render_manifests(release, spec["kserve"].get("storage_uri"))
            except (DeployError, KeyError, ValueError):
                sides.append([])
                continue
            sides.append(yaml.safe_dump_all(manifests, sort_keys=False).splitlines(keepends=True))
        if sides[0] or sides[1]:
            diff = difflib.unified_diff(sides[0], sides[1], "base", "this branch", n=2)
            out[address] = "".join(diff)
    return out


def _resolved(registry: Any, ref: str) -> str | None:
    version = registry.find(ref) if registry is not None else None
    return f"{version.model.name}@{version.number}" if version else None
