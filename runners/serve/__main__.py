"""Runner `serve`, entry point: `python -m runners.serve [CONFIG.json]`; exit 0, 2 config, 3 model,
4 public port held by something it may not share with (runners/serve/ports.py).

Without a path the config JSON (or a path to it) comes from $LLMOPS_SERVE_CONFIG, as in the
docker image and the KServe ServingRuntime.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from runners.serve.config import ConfigError, load_config

EXIT_CONFIG = 2


def _leave(signum: int, frame: FrameType | None) -> None:
    # Before the server runs nothing is in flight: a stop request is a clean exit.
    raise SystemExit(0)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _leave)
    signal.signal(signal.SIGINT, _leave)
    try:
        config = load_config(argv)
    except ConfigError as err:
        print(f"llmops-serve: bad config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from runners.serve.server import run

    try:
        return run(config)
    except ConfigError as err:
        print(f"llmops-serve: bad config: {err}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
