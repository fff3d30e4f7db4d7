"""Runner `train`, one rank of a distributed run: python -m runners.train.worker JOB.json,
started by torchrun (`python -m runners.train` on one machine, a TrainJob's nodes on
Kubernetes); exit 0, 2 bad job, 3 unhealthy. Rank 0 writes result.json, as __main__ does."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

from runners.train import runlock
from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.loop import train


def _die_with_launcher() -> None:
    """SIGKILL when the launcher dies (Linux): no rank outlives it and writes beside the
    next run's ranks."""
    if os.environ.get(runlock.KEEP_ORPHAN_ENV):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(runlock.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m runners.train.worker JOB.json", file=sys.stderr)
        return 2
    _die_with_launcher()
    job = TrainJob.load(Path(argv[1]))
    out = Path(job.output)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = train(job)
    except UnhealthyRun as err:
        if rank == 0:
            (out / "result.json").write_text(
                json.dumps(
                    {
                        "status": "unhealthy",
                        "message": str(err),
                        "step": err.step,
                        "layer": err.layer,
                    }
                )
            )
        print(f"unhealthy (rank {rank}): {err}", file=sys.stderr)
        return 3
    except TrainError as err:
        if rank == 0:
            (out / "result.json").write_text(json.dumps({"status": "failed", "message": str(err)}))
        print(f"error (rank {rank}): {err}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
