"""Code identity: a runner's digest follows the content of the code it runs, on a copy of the
source tree (the real runners/ is never edited)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.load.code import CodeIdentity, code_identities, forget_computed, pinned_identities
from controller.load.desired import load_desired
from controller.observe.applied import observed_from_lock
from controller.plan.kinds import ActionKind
from controller.plan.planner import plan
from controller.state.lockfile import lock_from_desired, parse_lock, render_lock
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def source(tmp_path: Path) -> Path:
    copy = tmp_path / "source"
    shutil.copytree(
        PROJECT_ROOT / "runners", copy / "runners", ignore=shutil.ignore_patterns("__pycache__")
    )
    return copy


def test_a_runner_covers_its_package_what_it_imports_and_its_libraries(source: Path) -> None:
    table = code_identities(source)
    train = table["train"].files
    assert "runners/train/loop.py" in train and "runners/errors.py" in train
    assert not any(p.startswith("runners/evaluate/") for p in train)
    assert {"lib:torch", "lib:transformers", "lib:peft"} <= set(train)
    assert "lib:lm-eval" in table["evaluate"].files
    assert table["suite"].files == {}
    assert code_identities(source) is table  # once per process and source root


def test_a_line_changed_in_training_code_retrains_and_names_the_file(
    make_repo: Callable[..., Path], source: Path, tmp_path: Path
) -> None:
    repo = make_repo()
    before = load_desired(repo, code=code_identities(source, tmp_path / "cache"))
    assert before.desired is not None
    lock = parse_lock(render_lock(lock_from_desired(before.desired)))  # as written and read

    loop = source / "runners" / "train" / "loop.py"
    original = loop.read_text()
    clipping = "torch.nn.utils.clip_grad_norm_(params, 1.0)"
    assert clipping in original
    loop.write_text(original.replace(clipping, "torch.nn.utils.clip_grad_norm_(params, 0.5)"))
    forget_computed()
    changed = load_desired(repo, code=code_identities(source, tmp_path / "cache"))
    assert changed.desired is not None
    actions = {a.address: a for a in plan(changed.desired, observed_from_lock(lock)).actions}
    run = actions["Experiment/exp/default"]
    assert run.kind is ActionKind.RETRAIN
    assert run.reason == "runner train changed: runners/train/loop.py"
    assert actions["Dataset/faq"].kind is ActionKind.NOOP  # other runners' code did not move

    loop.write_text(original)
    forget_computed()
    reverted = load_desired(repo, code=code_identities(source, tmp_path / "cache"))
    assert reverted.desired is not None
    again = plan(reverted.desired, observed_from_lock(lock))
    assert not again.has_changes, [a.reason for a in again.pending]
    forget_computed()


def test_a_library_upgrade_is_named(make_repo: Callable[..., Path], source: Path) -> None:
    repo = make_repo()
    table = code_identities(source)
    before = load_desired(repo, code=table)
    assert before.desired is not None
    lock = lock_from_desired(before.desired)
    files = {**table["train"].files, "lib:torch": "9.9.9"}
    upgraded = {**table, "train": CodeIdentity("sha256:upgraded", files)}
    after = load_desired(repo, code=upgraded)
    assert after.desired is not None
    action = next(
        a
        for a in plan(after.desired, observed_from_lock(lock)).actions
        if a.address == "Experiment/exp/default"
    )
    assert action.reason.startswith("runner train changed: torch ")
    assert action.reason.endswith(" -> 9.9.9")


def test_pinned_identities_keep_digests_fixed(make_repo: Callable[..., Path]) -> None:
    repo = make_repo()
    one = load_desired(repo, code=pinned_identities())
    two = load_desired(repo, code=pinned_identities())
    assert one.desired is not None and two.desired is not None
    assert one.desired.resources["Experiment/exp/default"].code_version == "train/1"
    assert {a: r.digest for a, r in one.desired.resources.items()} == {
        a: r.digest for a, r in two.desired.resources.items()
    }
