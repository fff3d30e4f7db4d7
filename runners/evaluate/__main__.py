"""Runner `evaluate`, entry point: python -m runners.evaluate JOB.json; exit 0, 2 bad job or suite.

As `python -m runners.train`: the job file in (runners/evaluate/job.py), the results in its
output folder (samples-<task>.jsonl and results.json, what a local evaluation writes) and
result.json with the status, so whoever started the container reads back how it ended.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runners.evaluate.job import EvalJob
from runners.evaluate.run import EvalError, evaluate

RESULT = "result.json"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m runners.evaluate JOB.json", file=sys.stderr)
        return 2
    try:
        job = EvalJob.load(Path(argv[1]))
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        job.check()
        summary = evaluate(job.inputs(report=lambda text: print(text, file=sys.stderr)))
    except EvalError as err:
        (out / RESULT).write_text(json.dumps({"status": "failed", "message": str(err)}))
        print(f"error: {err}", file=sys.stderr)
        return 2
    (out / RESULT).write_text(json.dumps({"status": "succeeded", "metrics": summary["metrics"]}))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
