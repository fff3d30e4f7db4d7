"""Runner `train`, distributed: the ranks' process group (torchrun's environment) for the loop,
and the launcher that starts this node's ranks and names the one that died.

`batch_size` is the global micro-batch: every rank takes its share (`shard`) of the batch a
single process would take, so the data order, the schedule and the checkpoints do not depend
on the world size, and a run resumes its last checkpoint at another one. Rank 0 alone writes
the log, the checkpoints, the model and result.json.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from runners.errors import LlmopsError

FAULT_RANK_ENV = "LLMOPS_FAULT_RANK"  # fault injection: only this rank is killed (loop.py)
WORKER_MODULE = "runners.train.worker"

T = TypeVar("T")


class RankFailed(LlmopsError):
    """A training process died; the message names its rank, and the run resumes when run again."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"  # ddp: whole model on every rank; fsdp: parameters sharded

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def sharded(self) -> bool:
        """FSDP: every rank holds a shard of each parameter; reading one whole is collective."""
        return self.distributed and self.strategy == "fsdp"

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share of a global micro-batch (every size-th item from its rank)."""
        return items[self.rank :: self.size]

    def sum(self, values: list[float]) -> list[float]:
        """The values summed over the ranks (float64, so the sum does not lose the parts)."""
        if not self.distributed:
            return values
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device())
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def killed_here(self) -> bool:
        """Whether the crash tests' fault switch names this rank (any rank when unset)."""
        wanted = os.environ.get(FAULT_RANK_ENV, "")
        return not wanted or int(wanted) == self.rank


SINGLE = World()  # one process, no process group


def join(strategy: str = "ddp") -> World:
    """The process group torchrun's environment describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); a single process when there is none."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    world = World(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
        strategy,
    )
    if world.distributed:
        import torch.distributed as dist

        if torch.cuda.is_available():
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world


def leave(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(model: Any, world: World) -> Any:
    """The module the steps call, made before the optimiser: DistributedDataParallel over the
    model (gradients averaged over the ranks); for fsdp the model itself, its transformer
    blocks and then the rest sharded in place (FSDP2 `fully_shard`: parameters become
    DTensors, names unchanged); the model itself for one process. Checkpoints and health
    checks read the model, so parameter names do not depend on the world size."""
    if not world.distributed:
        return model
    if world.sharded:
        from torch.distributed.fsdp import fully_shard

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        blocks = set(getattr(base, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.local_rank] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=ids)


@contextmanager
def gradient_sync(stepper: Any, world: World, sync: bool) -> Iterator[None]:
    """Backward passes that average gradients over the ranks (sync) or only accumulate them
    (the micro-batches before an optimiser step's last)."""
    if not world.distributed or sync:
        if world.sharded:
            stepper.set_requires_gradient_sync(True)
        yield
    elif world.sharded:
        stepper.set_requires_gradient_sync(False)
        yield
    else:
        with stepper.no_sync():
            yield


def whole(tensor: Any) -> Any:
    """A parameter or gradient whole: an FSDP shard gathered (collective), else itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _trainable_names(model: Any) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def trainable_state(model: Any, world: World) -> dict[str, Any] | None:
    """The trainable weights, whole, on the CPU: on rank 0 (None elsewhere); collective for
    fsdp, so every rank calls it."""
    if world.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        names = set(_trainable_names(model))
        return {k: v for k, v in full.items() if k in names} if world.main else None
    if not world.main:
        return None
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def optimizer_state(model: Any, optimizer: Any, world: World) -> dict[str, Any] | None:
    """The optimiser's state in torch's own layout (parameters by index), whole: on rank 0
    (None elsewhere); collective for fsdp. One layout for every strategy and world size."""
    if world.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full = get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not world.main:
            return None
        index = {name: i for i, name in enumerate(_trainable_names(model))}
        return {
            "state": {index[name]: value for name, value in full["state"].items()},
            "param_groups": [
                {**group, "params": [index[name] for name in group["params"]]}
                for group in full["param_groups"]
            ],
        }
    return optimizer.state_dict() if world.main else None


def load_trainable(model: Any, trainable: dict[str, Any], world: World) -> None:
    if world.sharded:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
        )

        set_model_state_dict(
            model, trainable, options=StateDictOptions(full_state_dict=True, strict=False)
        )
    else:
        model.load_state_dict(trainable, strict=False)


def load_optimizer(model: Any, optimizer: Any, saved: dict[str, Any], world: World) -> None:
    """A checkpoint's optimiser state (torch's layout, whatever world size wrote it)."""
    if not world.sharded:
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = _trainable_names(model)
    by_name = {
        "state": {names[int(i)]: value for i, value in saved["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in saved["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )


def launch(job_file: Path, nproc_per_node: int) -> None:
    """Start `nproc_per_node` ranks of the job on this machine (torchrun's elastic agent,
    standalone rendezvous, no restarts) and wait for them; RankFailed names the rank that
    died, the others are stopped."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: the ranks share the cores
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=f"llmops-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
    )
    try:
        elastic_launch(config, sys.executable)("-m", WORKER_MODULE, str(job_file))
    except ChildFailedError as err:
        raise RankFailed(describe_failures(err.failures, nproc_per_node)) from None


def describe_failures(failures: dict[int, Any], world: int) -> str:
    """'rank 1 of 2 (pid 123) was killed by SIGKILL': the killed ranks first (the cause; the
    others usually fail after losing them), then the ones that exited with an error."""

    def killed(failure: Any) -> bool:
        return int(failure.exitcode) < 0

    ordered = sorted(failures.items(), key=lambda item: (not killed(item[1]), item[0]))
    parts = []
    for rank, failure in ordered:
        code = int(failure.exitcode)
        if code < 0:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        parts.append(f"rank {rank} of {world} (pid {failure.pid}) {how}")
    return "; ".join(parts)
