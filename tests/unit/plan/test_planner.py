"""plan(desired, observed): action kinds, reasons, order, determinism (with hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from controller.plan.digest import canonical_json, resource_digest
from controller.plan.planner import flatten, plan
from controller.plan.types import (
    ActionKind,
    DesiredResource,
    DesiredState,
    ObservedResource,
    ObservedState,
)


class AnySpec(BaseModel):
    """A spec of no kind: planning never reads the typed spec."""


def desired(address: str, spec: dict, inputs: dict | None = None, wave: int = 0) -> DesiredResource:
    kind = address.split("/")[0]
    inputs = inputs or {}
    return DesiredResource(
        address=address,
        kind=kind,
        name=address.split("/")[1],
        spec=AnySpec(),  # the planner reads only the JSON form
        fields=spec,
        inputs=inputs,
        depends_on=tuple(inputs),
        digest=resource_digest(kind, spec, inputs, "x/1"),
        runner="x",
        code_version="x/1",
    )


def observed_of(resource: DesiredResource) -> ObservedResource:
    return ObservedResource(
        address=resource.address,
        kind=resource.kind,
        digest=resource.digest,
        fields=resource.fields,
        inputs=resource.inputs,
        code_version=resource.code_version,
    )


def state(*resources: DesiredResource, waves: dict[str, int] | None = None) -> DesiredState:
    return DesiredState(
        {r.address: r for r in resources}, waves or {r.address: 0 for r in resources}
    )


def test_new_changed_same_and_removed() -> None:
    model = desired("Model/base", {"source": "a"})
    run = desired("Experiment/exp/default", {"training": {"learning_rate": 2e-4}})
    old_run = desired("Experiment/exp/default", {"training": {"learning_rate": 1e-4}})
    gone = desired("Deployment/old", {"model": "x"})
    want = state(model, run, desired("Deployment/new", {"model": "base"}))
    have = ObservedState({r.address: observed_of(r) for r in (model, old_run, gone)})
    actions = {a.address: a for a in plan(want, have).actions}
    assert actions["Model/base"].kind is ActionKind.NOOP
    assert actions["Experiment/exp/default"].kind is ActionKind.RETRAIN
    assert actions["Experiment/exp/default"].reason == (
        "spec training.learning_rate: 0.0001 -> 0.0002"
    )
    assert actions["Deployment/new"].kind is ActionKind.DEPLOY
    assert actions["Deployment/old"].kind is ActionKind.DELETE


def test_changed_input_is_named() -> None:
    suite_v1 = desired("EvalSuite/s", {"gates": 1})
    suite_v2 = desired("EvalSuite/s", {"gates": 2})
    eval_v1 = desired("Evaluation/e/default", {"suite": "s"}, {"EvalSuite/s": suite_v1.digest})
    eval_v2 = desired("Evaluation/e/default", {"suite": "s"}, {"EvalSuite/s": suite_v2.digest})
    result = plan(
        state(suite_v2, eval_v2),
        ObservedState({r.address: observed_of(r) for r in (suite_v1, eval_v1)}),
    )
    evaluation = next(a for a in result.actions if a.address == "Evaluation/e/default")
    assert evaluation.kind is ActionKind.REEVALUATE
    assert evaluation.reason.startswith("input EvalSuite/s changed")


def test_order_is_wave_then_kind_then_name() -> None:
    a = desired("Pipeline/a", {})
    b = desired("Model/b", {})
    c = desired("Dataset/c", {})
    d = desired("Model/a", {})
    result = plan(
        state(a, b, c, d, waves={"Pipeline/a": 0, "Model/b": 0, "Dataset/c": 0, "Model/a": 1}),
        ObservedState({}),
    )
    assert [x.address for x in result.actions] == ["Model/b", "Dataset/c", "Pipeline/a", "Model/a"]


def test_exit_semantics() -> None:
    model = desired("Model/base", {"source": "a"})
    assert not plan(state(model), ObservedState({"Model/base": observed_of(model)})).has_changes
    assert plan(state(model), ObservedState({})).has_changes


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}, "f": [{"g": 2}]}) == {
        "a.b": 1,
        "a.c.d": [1],
        "e": {},
        "f[0].g": 2,
    }


specs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.dictionaries(st.text("abc", min_size=1, max_size=3), children, max_size=3),
    max_leaves=8,
)
addresses = st.sampled_from(
    ["Model/a", "Model/b", "Dataset/d", "Experiment/e/default", "Evaluation/e/x", "Deployment/p"]
)


@settings(max_examples=200, deadline=None)
@given(
    want=st.dictionaries(addresses, st.dictionaries(st.text("xy", max_size=2), specs, max_size=3)),
    have=st.dictionaries(addresses, st.dictionaries(st.text("xy", max_size=2), specs, max_size=3)),
    waves=st.dictionaries(addresses, st.integers(0, 4)),
)
def test_plan_is_deterministic(want: dict, have: dict, waves: dict) -> None:
    desired_state = DesiredState(
        {a: desired(a, s) for a, s in want.items()}, {a: waves.get(a, 0) for a in want}
    )
    observed = ObservedState({a: observed_of(desired(a, s)) for a, s in have.items()})
    reversed_state = DesiredState(
        dict(reversed(list(desired_state.resources.items()))), desired_state.waves
    )
    reversed_observed = ObservedState(dict(reversed(list(observed.resources.items()))))
    first = plan(desired_state, observed)
    assert first == plan(desired_state, observed)
    assert first == plan(reversed_state, reversed_observed)
    assert {a.address for a in first.actions} == set(want) | set(have)
    for action in first.actions:
        same = (
            action.address in want
            and action.address in have
            and canonical_json(want[action.address]) == canonical_json(have[action.address])
        )
        assert (action.kind is ActionKind.NOOP) == same
