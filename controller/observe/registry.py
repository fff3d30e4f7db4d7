"""Observation from the registry: stored models, prepared datasets, trained runs, evaluations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from controller.api.dataset import DatasetSpec
from controller.api.evaluation import EvaluationSpec
from controller.api.experiment import ExperimentSpec
from controller.api.model import ExperimentSource, ModelSpec
from controller.plan.address import Address
from controller.plan.kinds import DATASET, EVAL_SUITE, EXPERIMENT, MODEL
from controller.plan.types import DesiredState, ObservedResource, ObservedState
from controller.state.provenance import Provenance, TrustContext, accepts

if TYPE_CHECKING:
    from controller.state.registry.store import Registry


def merge_registry(
    observed: ObservedState,
    versions: Mapping[str, list[tuple[int, str | None]]],
    desired_digests: Mapping[Address, str],
) -> ObservedState:
    """The registry decides whether a Model exists: the lock file may be from another machine.

    A Model is observed with the desired digest when any stored version carries it (reuse by
    digest), with the newest version's digest when it has others, and not at all when the
    registry has no version, so the plan pulls it.
    """
    # Models an experiment produces are not pulled: the lock file alone records them.
    resources = {
        a: r for a, r in observed.resources.items() if r.kind != MODEL or a not in desired_digests
    }
    for address, desired_digest in desired_digests.items():
        stored = versions.get(address.name, [])
        if not stored:
            continue
        digests = [d for _, d in stored if d]
        digest = desired_digest if desired_digest in digests else (digests[-1] if digests else "")
        locked = observed.resources.get(str(address))
        resources[str(address)] = ObservedResource(
            address=address,
            kind=MODEL,
            digest=digest,
            fields=locked.fields if locked and locked.digest == digest else {},
            inputs=locked.inputs if locked and locked.digest == digest else {},
            code_version=locked.code_version if locked else "",
            outputs={"versions": [n for n, _ in stored]},
        )
    return ObservedState(
        resources=resources,
        source=observed.source,
        kind_sources={**observed.kind_sources, "Model": "the registry"},
    )


def merge_datasets(
    observed: ObservedState,
    prepared: Mapping[str, list[dict[str, Any]]],
    desired_digests: Mapping[Address, str],
) -> ObservedState:
    """A Dataset is observed as prepared when the registry has a version from its inputs.

    `prepared` maps a dataset name to its versions, oldest first, each with the inputs
    digest that produced it and the spec and inputs recorded then (for the plan's reasons).
    """
    resources = {a: r for a, r in observed.resources.items() if r.kind != DATASET}
    for address, desired_digest in desired_digests.items():
        versions = prepared.get(address.name, [])
        if not versions:
            continue
        match = next((v for v in versions if v["resource_digest"] == desired_digest), versions[-1])
        resources[str(address)] = ObservedResource(
            address=address,
            kind=DATASET,
            digest=match["resource_digest"],
            fields=match.get("spec") or {},
            inputs=match.get("inputs") or {},
            code_version=match.get("code_version") or "",
            outputs={"version": match["version"]},
        )
    return ObservedState(
        resources=resources,
        source=observed.source,
        kind_sources={**observed.kind_sources, "Dataset": "the registry"},
    )


def merge_runs(
    observed: ObservedState,
    trained: Mapping[str, list[str]],
    desired_digests: Mapping[str, str],
    refused: Mapping[str, str] | None = None,
) -> ObservedState:
    """An Experiment run is trained when a registered version carries its digest.

    A run the registry knows only from other digests is observed with the newest of them
    (the plan retrains it); the lock file's entry supplies the spec and inputs for reasons.
    """
    resources = dict(observed.resources)
    for address, desired_digest in desired_digests.items():
        if refused and address in refused:
            # Stored only by untrusted refs, and the trust rule refuses it: not done here.
            locked = observed.resources.get(address)
            resources[address] = ObservedResource(
                address=address,
                kind="Experiment",
                digest=f"untrusted:{desired_digest}",
                fields=locked.fields if locked else {},
                inputs=locked.inputs if locked else {},
                code_version=locked.code_version if locked else "",
                drift=refused[address],
            )
            continue
        digests = trained.get(address, [])
        if not digests:
            continue
        digest = desired_digest if desired_digest in digests else digests[-1]
        locked = observed.resources.get(address)
        if locked is not None and locked.digest == digest:
            continue
        resources[address] = ObservedResource(
            address=address,
            kind="Experiment",
            digest=digest,
            fields=locked.fields if locked else {},
            inputs=locked.inputs if locked else {},
            code_version=locked.code_version if locked else "",
            code_files=locked.code_files if locked else {},
        )
    return ObservedState(
        resources=resources,
        source=observed.source,
        kind_sources={**observed.kind_sources, "Experiment": "the registry"},
    )


def refused_runs(
    desired: DesiredState, registry: Registry, trust: TrustContext | None
) -> dict[str, str]:
    """Experiment runs whose every stored version under the desired digest comes from an
    untrusted ref the trust rule refuses -> why (only when applying for a trusted ref)."""
    if trust is None or not trust.trusted:
        return {}
    refused: dict[str, str] = {}
    for resource, spec in desired.specs(ExperimentSpec):
        address = str(resource.address)
        name = spec.register_as or resource.name
        reasons = []
        for version in registry.all_by(name, resource.digest):
            recorded = Provenance.from_dict((version.extra or {}).get("provenance"))
            ok, why = accepts(trust, recorded, resource.code_version, resource.code_files)
            if ok:
                break
            reasons.append(f"{name}@{version.number} {why}")
        else:
            if reasons:
                refused[address] = "; ".join(reasons) + "; main recomputes it"
    return refused


def merge_evaluations(
    observed: ObservedState,
    evaluated: set[tuple[str, str]],
    desired: Mapping[str, tuple[str, str, str]],
) -> ObservedState:
    """An Evaluation is done when the registry holds metrics of its subject's version for
    its suite's digest. `desired` maps an address to (digest, subject digest, suite digest)."""
    resources = dict(observed.resources)
    for address, (digest, subject, suite) in desired.items():
        if (subject, suite) in evaluated and address not in resources:
            resources[address] = ObservedResource(address=address, kind="Evaluation", digest=digest)
    return ObservedState(
        resources=resources, source=observed.source, kind_sources=dict(observed.kind_sources)
    )


def observe_registry(
    observed: ObservedState,
    desired: DesiredState,
    registry: Registry,
    trust: TrustContext | None = None,
) -> ObservedState:
    """Everything the registry knows, merged over the lock file's observation."""
    models = {
        r.address: r.digest
        for r, spec in desired.specs(ModelSpec)
        if not isinstance(spec.source, ExperimentSource)
    }
    observed = merge_registry(observed, registry.version_digests(), models)
    datasets = {r.address: r.digest for r, _ in desired.specs(DatasetSpec)}
    observed = merge_datasets(observed, registry.datasets.observed(), datasets)
    runs = {str(r.address): r.digest for r, _ in desired.specs(ExperimentSpec)}
    observed = merge_runs(
        observed, registry.run_digests(), runs, refused_runs(desired, registry, trust)
    )
    evaluations = {}
    for resource, _ in desired.specs(EvaluationSpec):
        address = str(resource.address)
        kinds = {a: (p.kind if (p := Address.try_parse(a)) else None) for a in resource.inputs}
        suite = next((d for a, d in resource.inputs.items() if kinds[a] == EVAL_SUITE), "")
        subject = next(
            (d for a, d in resource.inputs.items() if kinds[a] in (EXPERIMENT, MODEL)), ""
        )
        evaluations[address] = (resource.digest, subject, suite)
    # On a trusted ref only metrics a trusted ref wrote make an evaluation done: a pull
    # request's numbers are its own (the trust boundary, docs/architecture.md).
    trusted_only = trust is not None and trust.trusted
    return merge_evaluations(observed, registry.evaluated(trusted_only), evaluations)
