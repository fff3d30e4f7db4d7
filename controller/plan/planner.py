"""Planning, the diff: plan(desired, observed) -> Plan, pure and deterministic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.plan.digest import canonical_json, short
from controller.plan.kinds import KINDS, rank
from controller.plan.types import (
    Action,
    ActionKind,
    DesiredResource,
    DesiredState,
    ObservedResource,
    ObservedState,
    Plan,
)

MAX_REASONS = 3


def plan(desired: DesiredState, observed: ObservedState) -> Plan:
    """Pair desired and observed resources by address and decide one action for each."""
    actions: list[Action] = []
    for address, want in desired.resources.items():
        wave = desired.waves.get(address, 0)
        have = observed.resources.get(address)
        actions.append(_decide(want, have, wave, observed.source_of(want.kind)))
    delete_wave = max(desired.waves.values(), default=-1) + 1
    for address, have in observed.resources.items():
        if address in desired.resources:
            continue
        actions.append(
            Action(
                kind=ActionKind.DELETE,
                address=address,
                resource_kind=have.kind,
                runner="delete",
                before=have.digest,
                after=None,
                reason=f"no longer in specs; recorded in {observed.source_of(have.kind)}",
                wave=delete_wave,
            )
        )
    return Plan(tuple(sorted(actions, key=_order_key)))


def _order_key(action: Action) -> tuple[int, int, str]:
    position = rank(action.resource_kind)
    if action.kind is ActionKind.DELETE:
        position = -position  # dependents go first when removing
    return (action.wave, position, action.address)


def _decide(want: DesiredResource, have: ObservedResource | None, wave: int, source: str) -> Action:
    if have is None:
        return Action(
            kind=KINDS[want.kind].on_new,
            address=want.address,
            resource_kind=want.kind,
            runner=want.runner,
            before=None,
            after=want.digest,
            reason=f"new {want.kind}; not in {source}",
            wave=wave,
            estimate=want.estimate,
        )
    if have.digest == want.digest:
        return Action(
            kind=ActionKind.NOOP,
            address=want.address,
            resource_kind=want.kind,
            runner=want.runner,
            before=have.digest,
            after=want.digest,
            reason=f"unchanged ({short(want.digest)})",
            wave=wave,
        )
    changes = describe_changes(want, have)
    shown = "; ".join(changes[:MAX_REASONS])
    if len(changes) > MAX_REASONS:
        shown += f"; and {len(changes) - MAX_REASONS} more"
    return Action(
        kind=KINDS[want.kind].on_change,
        address=want.address,
        resource_kind=want.kind,
        runner=want.runner,
        before=have.digest,
        after=want.digest,
        reason=shown,
        wave=wave,
        changes=tuple(changes),
        estimate=want.estimate,
    )


def describe_changes(want: DesiredResource, have: ObservedResource) -> list[str]:
    """What differs, most direct cause first: spec fields, then inputs, then runner code."""
    changes: list[str] = []
    if have.fields:
        before = flatten(have.fields)
        after = flatten(want.fields)
        for key in sorted(before.keys() | after.keys()):
            if key not in before:
                changes.append(f"spec {key} added ({_show(after[key])})")
            elif key not in after:
                changes.append(f"spec {key} removed (was {_show(before[key])})")
            elif canonical_json(before[key]) != canonical_json(after[key]):
                changes.append(f"spec {key}: {_show(before[key])} -> {_show(after[key])}")
    for key in sorted(have.inputs.keys() | want.inputs.keys()):
        old, new = have.inputs.get(key), want.inputs.get(key)
        label = _input_label(key)
        if old is None:
            changes.append(f"new input {label}")
        elif new is None:
            changes.append(f"input {label} no longer used")
        elif old != new:
            changes.append(f"input {label} changed ({short(old)} -> {short(new)})")
    if have.code_version and have.code_version != want.code_version:
        changes.append(describe_code_change(want, have))
    if have.drift:
        changes.insert(0, have.drift)
    if not changes:
        changes.append(f"digest changed ({short(have.digest)} -> {short(want.digest)})")
    return changes


def describe_code_change(want: DesiredResource, have: ObservedResource) -> str:
    """'runner train changed: runners/train/loop.py' from the per-file maps both digests
    hash (the lock file records the one applied); the digests when a map is missing."""
    if have.code_files and want.code_files:
        files = []
        for key in sorted(have.code_files.keys() | want.code_files.keys()):
            old, new = have.code_files.get(key), want.code_files.get(key)
            if old == new:
                continue
            if key.startswith("lib:"):
                files.append(f"{key.removeprefix('lib:')} {old or 'absent'} -> {new or 'absent'}")
            else:
                files.append(key if old and new else f"{key} {'added' if new else 'removed'}")
        if files:
            shown = ", ".join(files[:MAX_REASONS])
            if len(files) > MAX_REASONS:
                shown += f" and {len(files) - MAX_REASONS} more"
            return f"runner {want.runner} changed: {shown}"
    return f"runner {want.runner} code {short(have.code_version)} -> {short(want.code_version)}"


def _input_label(key: str) -> str:
    if key.startswith("arena:"):
        return f"votes of arena {key.removeprefix('arena:')}"
    if key.startswith("collected:"):
        return f"rows collected in {key.removeprefix('collected:')}"
    return f"file {key.removeprefix('file:')}" if key.startswith("file:") else key


def flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}, 'c': [{'d': 2}]} -> {'a.b': 1, 'c[0].d': 2}; scalar lists stay whole."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            out.update(flatten(item, dotted + "."))
        elif isinstance(item, list) and item and all(isinstance(i, Mapping) for i in item):
            for index, element in enumerate(item):
                out.update(flatten(element, f"{dotted}[{index}]."))
        else:
            out[dotted] = item
    return out


def _show(value: Any) -> str:
    text = canonical_json(value)
    return text if len(text) <= 40 else text[:37] + "..."
