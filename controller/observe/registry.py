"""Observation from the registry: which Model specs have a stored version with their digest."""

from __future__ import annotations

from collections.abc import Mapping

from controller.plan.types import ObservedResource, ObservedState


def merge_registry(
    observed: ObservedState,
    versions: Mapping[str, list[tuple[int, str | None]]],
    desired_digests: Mapping[str, str],
) -> ObservedState:
    """The registry decides whether a Model exists: the lock file may be from another machine.

    A Model is observed with the desired digest when any stored version carries it (reuse by
    digest), with the newest version's digest when it has others, and not at all when the
    registry has no version, so the plan pulls it.
    """
    resources = {a: r for a, r in observed.resources.items() if r.kind != "Model"}
    for address, desired_digest in desired_digests.items():
        name = address.split("/", 1)[1]
        stored = versions.get(name, [])
        if not stored:
            continue
        digests = [d for _, d in stored if d]
        digest = desired_digest if desired_digest in digests else (digests[-1] if digests else "")
        locked = observed.resources.get(address)
        resources[address] = ObservedResource(
            address=address,
            kind="Model",
            digest=digest,
            spec=locked.spec if locked and locked.digest == digest else {},
            inputs=locked.inputs if locked and locked.digest == digest else {},
            code_version=locked.code_version if locked else "",
            outputs={"versions": [n for n, _ in stored]},
        )
    return ObservedState(
        resources=resources,
        source=observed.source,
        kind_sources={**observed.kind_sources, "Model": "the registry"},
    )
