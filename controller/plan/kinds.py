"""Planning, kinds: the one table of per-kind facts (order, runner, runner code, actions).

Everything that used to keep its own list of kinds (the planner's order and actions, the
resolver's runner and its code roots, history's addresses, the apply engine's handlers)
reads this table. argo gitops-engine's per-kind functions looked up by kind are the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ActionKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    RETRAIN = "retrain"
    REEVALUATE = "reevaluate"
    DEPLOY = "deploy"
    DELETE = "delete"
    NOOP = "noop"


@dataclass(frozen=True)
class KindFacts:
    """What llmops knows of one resource kind."""

    kind: str
    runner: str  # the runner that produces it
    # The project packages whose code (and what they import) produces it: their content
    # digest is part of the resource's digest (controller/load/code.py). () when none.
    code: tuple[str, ...]
    on_new: ActionKind  # the action when it is not there yet
    on_change: ActionKind  # the action when its digest changed
    has_run: bool = False  # addressed as Kind/name/run


# In the order kinds are applied within one dependency wave.
_TABLE = (
    KindFacts("Model", "pull", ("runners.pull",), ActionKind.CREATE, ActionKind.UPDATE),
    KindFacts("Dataset", "prepare", ("runners.data",), ActionKind.CREATE, ActionKind.UPDATE),
    KindFacts("EvalSuite", "suite", (), ActionKind.CREATE, ActionKind.UPDATE),
    KindFacts(
        "Experiment",
        "train",
        ("runners.train",),
        ActionKind.CREATE,
        ActionKind.RETRAIN,
        has_run=True,
    ),
    KindFacts(
        "Evaluation",
        "evaluate",
        ("runners.evaluate",),
        ActionKind.CREATE,
        ActionKind.REEVALUATE,
        has_run=True,
    ),
    KindFacts("Arena", "arena", ("runners.arena",), ActionKind.CREATE, ActionKind.UPDATE),
    KindFacts(
        "Deployment",
        "deploy",
        ("runners.deploy", "runners.serve"),
        ActionKind.DEPLOY,
        ActionKind.DEPLOY,
    ),
    KindFacts("Pipeline", "pipeline", (), ActionKind.CREATE, ActionKind.UPDATE),
)
KINDS: dict[str, KindFacts] = {facts.kind: facts for facts in _TABLE}
# The kinds by name, for code that treats one kind apart (compared with these, never with a
# string literal); the table above is their one spelling.
MODEL, DATASET, EVAL_SUITE, EXPERIMENT, EVALUATION, ARENA, DEPLOYMENT, PIPELINE = (
    facts.kind for facts in _TABLE
)
KIND_ORDER: tuple[str, ...] = tuple(KINDS)
RUN_KINDS: frozenset[str] = frozenset(k for k, f in KINDS.items() if f.has_run)


def rank(kind: str) -> int:
    """Position within a wave; an unknown kind (from a newer lock file) goes last."""
    return KIND_ORDER.index(kind) if kind in KINDS else len(KIND_ORDER)
