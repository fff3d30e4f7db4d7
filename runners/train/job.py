"""Runner `train`, job description: everything a run needs, as JSON-serialisable data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runners.errors import LlmopsError


class TrainError(LlmopsError):
    """A permanent problem with the job (config, data, hardware); the message says what to do."""


class UnhealthyRun(TrainError):
    """The health checks stopped the run; the message names the step and the layer."""

    def __init__(self, message: str, step: int, layer: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.layer = layer


@dataclass
class TrainJob:
    run_id: str
    base_model: str  # folder with config, tokenizer and safetensors
    train_file: str  # JSONL rows in `format`
    output: str  # run folder: checkpoints/, log.jsonl, model/, result.json
    format: str = "instruction"
    training: dict[str, Any] = field(default_factory=dict)
    eval_file: str | None = None
    trust_remote_code: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> TrainJob:
        return cls(**json.loads(path.read_text()))
