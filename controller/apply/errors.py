"""Apply, errors: the permanent failures of apply steps, which the CLI reports in one line."""

from __future__ import annotations


def permanent_errors() -> tuple[type[Exception], ...]:
    """Errors whose message says what to do; anything else is a bug and shows as one.

    Imported on call so a CLI command pays for the runners it uses only when it fails.
    """
    from controller.apply.train import TrainFailed
    from controller.state.dvc import DvcError
    from runners.data import PrepareError
    from runners.deploy.release import DeployError
    from runners.evaluate.run import EvalError
    from runners.pull import PullError

    return (PullError, PrepareError, DvcError, TrainFailed, EvalError, DeployError)
