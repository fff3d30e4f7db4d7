"""A Deployment's serving limits: the slow-loris ones (header_timeout_s, read_timeout_s,
max_pending_connections) are declared, bounded and located like the others, match the
runtime's own config, and leave existing deployments' digests alone while unset."""

from __future__ import annotations

import textwrap

import pytest
from pydantic import ValidationError

from controller.api.deployment import DeploymentSpec, Limits
from controller.load.loader import load_text
from runners.serve.config import Limits as RuntimeLimits

DEPLOYMENT = """
apiVersion: llmops/v1
kind: Deployment
metadata:
  name: support-assistant
spec:
  model: support-assistant@champion
  limits:
    max_tokens: 256
{limits}
"""


def load(limits: str) -> list:
    text = textwrap.dedent(DEPLOYMENT).lstrip("\n").format(limits=limits)
    return load_text(text, "specs/deployments/support-assistant.yaml").diagnostics


def test_the_new_limits_are_accepted() -> None:
    found = load("    header_timeout_s: 5\n    read_timeout_s: 20\n    max_pending_connections: 64")
    assert found == []
    limits = DeploymentSpec(
        model="m",
        limits={"header_timeout_s": 5, "read_timeout_s": 20, "max_pending_connections": 64},
    ).limits
    assert (limits.header_timeout_s, limits.read_timeout_s, limits.max_pending_connections) == (
        5.0,
        20.0,
        64,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("header_timeout_s", 0), ("read_timeout_s", -1), ("max_pending_connections", 0)],
)
def test_out_of_bounds_is_a_located_error(field: str, value: int) -> None:
    (found,) = load(f"    {field}: {value}")
    assert (found.file, found.line, found.path) == (
        "specs/deployments/support-assistant.yaml",
        9,
        f"spec.limits.{field}",
    )
    assert "greater than" in found.message


def test_a_read_timeout_shorter_than_the_header_timeout_points_at_it() -> None:
    (found,) = load("    header_timeout_s: 20\n    read_timeout_s: 8")
    assert (found.file, found.line, found.col, found.path) == (
        "specs/deployments/support-assistant.yaml",
        10,
        21,
        "spec.limits.read_timeout_s",
    )
    assert found.message == (
        "read_timeout_s (8) covers the headers too, so it must be at least "
        "header_timeout_s (20); raise read_timeout_s or lower header_timeout_s"
    )
    rendered = found.render()
    assert rendered.startswith("specs/deployments/support-assistant.yaml:10:21: error: ")
    assert "Traceback" not in rendered


def test_a_header_timeout_above_the_default_read_timeout_is_caught_too() -> None:
    # read_timeout_s is not written: the error names it and points at the limits mapping.
    (found,) = load("    header_timeout_s: 45")
    assert (found.line, found.path) == (8, "spec.limits.read_timeout_s")
    assert "read_timeout_s (30)" in found.message and "header_timeout_s (45)" in found.message


def test_equal_timeouts_nest() -> None:
    assert load("    header_timeout_s: 15\n    read_timeout_s: 15") == []


def test_unset_new_limits_leave_the_dump_and_so_the_digest_alone() -> None:
    spec = DeploymentSpec(model="m", limits={"max_tokens": 256})
    assert list(spec.model_dump(mode="json")["limits"]) == [
        "max_body_bytes",
        "max_tokens",
        "timeout_s",
        "max_concurrency",
        "max_queue",
    ]
    # Written at their defaults changes nothing either; set otherwise, they are in it.
    same = DeploymentSpec(model="m", limits={"max_tokens": 256, "header_timeout_s": 10})
    assert same.model_dump() == spec.model_dump()
    changed = DeploymentSpec(model="m", limits={"max_tokens": 256, "read_timeout_s": 45})
    assert changed.model_dump(mode="json")["limits"]["read_timeout_s"] == 45.0


def test_the_spec_limits_mirror_the_runtime_limits() -> None:
    """Same fields, defaults, bounds and descriptions as runners/serve/config.py, so an unset
    limit (left out of the runtime's config) means the same on both sides."""
    spec = Limits.model_json_schema()
    runtime = RuntimeLimits.model_json_schema()
    assert spec["properties"] == runtime["properties"]
    assert spec.get("required") == runtime.get("required")


def test_the_runtime_rejects_what_the_spec_rejects() -> None:
    for values in (
        {"header_timeout_s": 20, "read_timeout_s": 8},
        {"header_timeout_s": 45},
        {"max_pending_connections": 0},
    ):
        with pytest.raises(ValidationError):
            Limits(**values)
        with pytest.raises(ValidationError):
            RuntimeLimits(**values)
