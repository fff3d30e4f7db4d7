"""Runner `train`, entry point: python -m runners.train JOB.json; exit 0, 2 bad job, 3 unhealthy,
4 another process writes the run folder (or the controller that started it is gone), 5 a rank
of a distributed run died (result.json names it; running again resumes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runners.train import runlock
from runners.train.distributed import RankFailed, launch
from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.loop import train  # torch: only once the run folder is ours

EXIT_BUSY = 4
EXIT_RANK_DIED = 5


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m runners.train JOB.json", file=sys.stderr)
        return 2
    if not runlock.die_with_parent():
        print("error: the apply that started this run is gone; not training", file=sys.stderr)
        return EXIT_BUSY
    job = TrainJob.load(Path(argv[1]))
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    # Held until this process exits: no second trainer ever writes this folder beside it.
    if not runlock.hold_for_life(out):
        found = runlock.holder(out)
        print(
            f"error: another training process ({found.describe() if found else 'unknown'}) "
            f"is writing {out}; wait for it or stop it",
            file=sys.stderr,
        )
        return EXIT_BUSY
    procs = int((job.training.get("distributed") or {}).get("nproc_per_node") or 1)
    if procs > 1:
        return _launch(Path(argv[1]), out, procs)
    try:
        result = train(job)
    except UnhealthyRun as err:
        (out / "result.json").write_text(
            json.dumps(
                {"status": "unhealthy", "message": str(err), "step": err.step, "layer": err.layer}
            )
        )
        print(f"unhealthy: {err}", file=sys.stderr)
        return 3
    except TrainError as err:
        (out / "result.json").write_text(json.dumps({"status": "failed", "message": str(err)}))
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _launch(job_file: Path, out: Path, procs: int) -> int:
    """This node's ranks (runners/train/worker.py under torchrun's agent), this process
    holding the run folder's lock for them; rank 0 writes result.json, and a rank that dies
    is named there."""
    (out / "result.json").unlink(missing_ok=True)
    try:
        launch(job_file, procs)
    except RankFailed as err:
        result_path = out / "result.json"
        if result_path.is_file():  # rank 0 said why (bad job, unhealthy): its word stands
            result = json.loads(result_path.read_text())
            print(f"{result.get('status')}: {result.get('message')}", file=sys.stderr)
            return 3 if result.get("status") == "unhealthy" else 2
        message = (
            f"distributed training failed: {err}; the other ranks were stopped. Run again "
            "to resume from the last checkpoint"
        )
        result_path.write_text(json.dumps({"status": "crashed", "message": message}))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_RANK_DIED
    print((out / "result.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
