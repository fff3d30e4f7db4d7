"""Runner `train`, entry point: python -m runners.train JOB.json; exit 0, 2 bad job, 3 unhealthy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runners.train.job import TrainError, TrainJob, UnhealthyRun
from runners.train.loop import train


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m runners.train JOB.json", file=sys.stderr)
        return 2
    job = TrainJob.load(Path(argv[1]))
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
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
