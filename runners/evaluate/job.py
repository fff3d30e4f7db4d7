"""Runner `evaluate`, job description: what `python -m runners.evaluate JOB` runs, as JSON data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runners.evaluate.endpoint import Endpoint
from runners.evaluate.run import EvalError, EvalInputs


@dataclass
class EvalJob:
    """An evaluation's inputs with every path as text, so a job written on one machine runs in
    a container that sees the state folder under another mount (as TrainJob)."""

    suite_name: str
    suite: dict[str, Any]  # the EvalSuite spec, resolved
    task_data: dict[str, str]  # task name -> JSONL rows
    model: str  # folder with config, tokenizer and safetensors
    output: str  # results folder: samples-<task>.jsonl, results.json, result.json
    judge_model: str | None = None
    batch_size: int = 8
    meta: dict[str, Any] = field(default_factory=dict)  # for people: model ref, suite digest
    # Evaluate an OpenAI-compatible endpoint instead of loading `model`, which then only
    # provides the tokenizer: {base_url, model, api_key_env?, concurrency?, max_length?}
    endpoint: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> EvalJob:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except OSError as err:
            raise EvalError(f"cannot read the evaluation job {path}: {err.strerror}") from err
        except (ValueError, TypeError) as err:
            raise EvalError(
                f"{path} is not an evaluation job ({err}); write it with EvalJob.save"
            ) from err

    def check(self) -> None:
        """Every path the job names exists here: a job written for a container whose state
        folder is not mounted where the job says fails in one line, before loading anything."""
        wanted = {"model": self.model, **{f"task {k} data": v for k, v in self.task_data.items()}}
        if self.judge_model:
            wanted["judge model"] = self.judge_model
        missing = [f"{what} {path}" for what, path in wanted.items() if not Path(path).exists()]
        if missing:
            raise EvalError(
                f"the evaluation job's {', '.join(missing)} not found; the job's paths must be "
                "as this machine (or container) sees them: mount the state folder there"
            )

    def inputs(self, report: Any = print) -> EvalInputs:
        return EvalInputs(
            suite_name=self.suite_name,
            suite=self.suite,
            task_data={name: Path(path) for name, path in self.task_data.items()},
            model_path=Path(self.model),
            out=Path(self.output),
            judge_path=Path(self.judge_model) if self.judge_model else None,
            batch_size=self.batch_size,
            report=report,
            endpoint=self._endpoint(),
        )

    def _endpoint(self) -> Endpoint | None:
        if self.endpoint is None:
            return None
        try:
            return Endpoint(tokenizer=Path(self.model), **self.endpoint)
        except TypeError as err:
            raise EvalError(
                f"the evaluation job's endpoint is malformed ({err}); give base_url and model, "
                "and optionally api_key_env, concurrency and max_length"
            ) from err
