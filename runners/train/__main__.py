"""Runner `train`, entry point: python -m runners.train JOB.json; exit 0, 2 bad job, 3 unhealthy,
4 another process writes the run folder (or the controller that started it is gone)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runners.train import runlock
from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.loop import train  # torch: only once the run folder is ours

EXIT_BUSY = 4


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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
