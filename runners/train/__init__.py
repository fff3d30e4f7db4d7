"""Runner `train`: fine-tune a model (LoRA or full; SFT, CPT, or DPO, ORPO and KTO
through trl in runners.train.preference) from a job description; resumable.

`python -m runners.train JOB.json` runs a job in its own process (the local executor, and
the container of a Kubernetes Job); `runners.train.loop.train` is the same in-process.
Never imports the controller.
"""

from runners.train.job import TrainError, TrainJob, UnhealthyRun

__all__ = ["TrainError", "TrainJob", "UnhealthyRun"]
