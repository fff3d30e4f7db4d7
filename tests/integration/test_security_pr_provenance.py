"""Issue 27, class 7, the parts without an apply: the commit a pull request records (real git),
the trusted state folder's mark, and metric rows' namespace (real SQLite, migration 0004)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from controller.state.paths import StatePaths
from controller.state.provenance import (
    STATE_MARK,
    SharedStateRefused,
    TrustContext,
    check_state_folder,
    mark_state_trusted,
    recorded_commit,
    state_marked_trusted,
    trust_context,
)
from controller.state.registry.db import make_engine, migrate
from controller.state.registry.store import NewVersion, Registry
from runners.errors import InvalidInput
from tests.apply_repo import git


@pytest.fixture
def merged(tmp_path: Path) -> tuple[Path, str, str]:
    """main (A, B), a branch commit C, and GitHub's M = merge(B, C) checked out, detached."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "a").write_text("a\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "A")
    git(root, "checkout", "-qb", "feature")
    (root / "c").write_text("c\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "C")
    head = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    (root / "b").write_text("b\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "B")
    git(root, "checkout", "-q", "--detach")
    git(root, "merge", "-q", "--no-ff", "-m", "M", "feature")
    return root, head, git(root, "rev-parse", "HEAD").strip()


def test_a_pull_request_records_its_head_not_the_synthetic_merge(
    merged: tuple[Path, str, str],
) -> None:
    root, head, merge = merged
    event = {"GITHUB_REF": "refs/pull/7/merge", "GITHUB_HEAD_REF": "feature"}
    context = trust_context(root, environ=event)
    assert (context.ref, context.trusted, context.commit) == ("feature", False, head)
    # The workflow's explicit head wins (a short sha is resolved).
    assert recorded_commit(root, {**event, "LLMOPS_COMMIT": head[:10]}) == head
    # A merge commit on a branch (not GitHub's synthetic one) is what it is.
    assert recorded_commit(root, {"GITHUB_REF": "refs/heads/main"}) == merge
    assert recorded_commit(root, {}) == merge
    with pytest.raises(InvalidInput, match="LLMOPS_COMMIT=f{40} is not a commit"):
        recorded_commit(root, {"LLMOPS_COMMIT": "f" * 40})
    # After `git merge --no-ff`, the recorded head is main's ancestor; M never is.
    git(root, "checkout", "-q", "main")
    git(root, "merge", "-q", "--no-ff", "-m", "Merge pull request #7", "feature")
    ancestors = git(root, "rev-list", "HEAD").split()
    assert head in ancestors and merge not in ancestors


def test_an_untrusted_apply_refuses_a_state_folder_marked_trusted(tmp_path: Path) -> None:
    checkout, shared = tmp_path / "work", tmp_path / "runner-state"
    checkout.mkdir()
    main = TrustContext(checkout, "main", None, True)
    branch = TrustContext(checkout, "feature", None, False)
    check_state_folder(branch, shared, environ={})  # unmarked: a pull request's own folder
    mark_state_trusted(shared, main)
    assert state_marked_trusted(shared) and (shared / STATE_MARK).is_file()
    with pytest.raises(SharedStateRefused) as refused:
        check_state_folder(branch, shared, environ={})
    message = str(refused.value)
    assert "marked trusted" in message and "'feature'" in message
    assert "--allow-shared-state" in message and "LLMOPS_STATE_DIR" in message
    assert refused.value.exit_code == 2
    check_state_folder(main, shared, environ={})
    check_state_folder(branch, shared, allow_shared=True, environ={})
    check_state_folder(branch, shared, environ={"LLMOPS_ALLOW_SHARED_STATE": "1"})
    # A developer's own checkout keeps mixing branches in its .llmops/.
    own = checkout / ".llmops"
    mark_state_trusted(own, main)
    check_state_folder(branch, own, environ={})


def test_metric_rows_carry_their_producer_and_old_rows_read_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command
    from alembic.config import Config

    from controller.state.registry.db import MIGRATIONS

    monkeypatch.delenv("LLMOPS_REGISTRY_URL", raising=False)
    paths = StatePaths(tmp_path / "state")
    paths.root.mkdir()
    engine = make_engine(f"sqlite:///{paths.root / 'registry.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.execute(text("INSERT INTO models (id, name, description) VALUES (1, 'm', '')"))
        conn.execute(
            text(
                "INSERT INTO model_versions (id, model_id, number, spec_digest, source, "
                "size_bytes, chat_template, trust_remote_code, extra, card) "
                "VALUES (1, 1, 1, 'sha256:v', '{}', 0, 0, 0, '{}', '')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO metrics (version_id, suite, suite_digest, name, value) "
                "VALUES (1, 's', 'sha256:old', 'x', 1.0)"
            )
        )
    migrate(engine)
    registry = Registry.open(paths)
    assert registry.evaluated(trusted_only=True) == {("sha256:v", "sha256:old")}
    version = registry.register(NewVersion("n", [], {}, spec_digest="sha256:w"))
    branch = {"commit": "c" * 40, "code": "sha256:e", "ref": "feature", "trusted": False}
    registry.add_metrics(version.id, "s", "sha256:new", {"x": 0.5}, branch)
    assert ("sha256:w", "sha256:new") in registry.evaluated()
    assert ("sha256:w", "sha256:new") not in registry.evaluated(trusted_only=True)
    (row,) = registry.find("n@1").metrics
    assert (row.namespace, row.git_commit, row.ref, row.code_digest) == (
        "untrusted",
        "c" * 40,
        "feature",
        "sha256:e",
    )
