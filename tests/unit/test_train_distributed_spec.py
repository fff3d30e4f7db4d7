"""training.distributed in the Experiment spec: checked where it is written, left out of the
dump and of the run's digest (a run resumes at another world size), and a dead rank named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from controller.api.experiment import Training
from controller.load.resolve import digested
from runners.train.distributed import World, describe_failures
from runners.train.options import TrainingOptions


def test_default_is_left_out_of_the_dump_and_a_setting_reads_back() -> None:
    assert "distributed" not in Training().model_dump(mode="json")
    written = Training(distributed={"nproc_per_node": 4, "strategy": "fsdp"})
    dumped = written.model_dump(mode="json")
    assert dumped["distributed"] == {"nproc_per_node": 4, "nnodes": 1, "strategy": "fsdp"}
    opts = TrainingOptions.from_mapping(dumped)
    assert opts.distributed.world_size == 4 and opts.distributed.strategy == "fsdp"


@pytest.mark.parametrize(
    ("training", "says"),
    [
        ({"batch_size": 6, "distributed": {"nproc_per_node": 4}}, "make it a multiple of 4"),
        ({"distributed": {"nnodes": 2}}, "needs executor type 'kubernetes'"),
        ({"objective": "dpo", "distributed": {"nproc_per_node": 2}}, "sft and cpt"),
        ({"method": "qlora", "distributed": {"nproc_per_node": 2}}, "sft and cpt"),
        ({"distributed": {"strategy": "deepspeed"}}, "'ddp' or 'fsdp'"),
        ({"distributed": {"nproc_per_node": 0}}, "greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(training: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Training(**training)


def test_two_nodes_on_kubernetes_are_accepted() -> None:
    training = Training(
        batch_size=8,
        distributed={"nproc_per_node": 2, "nnodes": 2},
        executor={"type": "kubernetes"},
    )
    assert training.distributed.world_size == 4


def test_the_world_size_is_not_part_of_the_digest() -> None:
    one = {"base_model": "m", "training": {"lr": 1, "distributed": {"nproc_per_node": 1}}}
    two = {"base_model": "m", "training": {"lr": 1, "distributed": {"nproc_per_node": 8}}}
    assert digested("Experiment", one) == digested("Experiment", two)
    assert digested("Experiment", one) == {"base_model": "m", "training": {"lr": 1}}
    assert digested("Dataset", one) == one  # only the Experiment's setting is left out


def test_a_rank_share_of_a_batch_and_the_shares_cover_it() -> None:
    batch = list(range(7))
    shares = [World(rank, 3).shard(batch) for rank in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().shard(batch) == batch


def test_the_killed_rank_is_named_first() -> None:
    failures = {
        0: SimpleNamespace(exitcode=1, pid=101),  # lost its peer
        1: SimpleNamespace(exitcode=-9, pid=102),  # killed
    }
    assert describe_failures(failures, 2) == (
        "rank 1 of 2 (pid 102) was killed by SIGKILL; rank 0 of 2 (pid 101) exited with code 1"
    )
