"""The training runner's options agree with the Experiment spec model they are written from."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from pydantic import TypeAdapter

from controller.api.experiment import Training
from runners.train.job import TrainError
from runners.train.options import NOT_TRAINING_OPTIONS, TrainingOptions


def _as_plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_plain(v) for v in value]
    return value


def test_every_spec_default_is_the_runner_default() -> None:
    # Field by field: a field left out of the dump at its default (exclude_if, which keeps
    # spec digests) still has a default the runner must share.
    training = Training()
    spec = {
        name: TypeAdapter(info.annotation).dump_python(getattr(training, name), mode="json")
        for name, info in Training.model_fields.items()
        if name not in NOT_TRAINING_OPTIONS
    }
    runner = _as_plain(asdict(TrainingOptions()))
    assert spec == runner


def test_the_runner_knows_every_field_of_the_spec_and_no_other() -> None:
    spec_fields = set(Training.model_fields) - NOT_TRAINING_OPTIONS
    assert spec_fields == set(TrainingOptions.__dataclass_fields__)


def test_a_dumped_spec_reads_back_as_the_same_options() -> None:
    written = Training(
        learning_rate=1e-3,
        lora={"r": 16, "target_modules": ["q_proj"]},
        early_stopping={"patience": 2},
        health={"max_grad_norm": 50.0},
    )
    opts = TrainingOptions.from_mapping(written.model_dump(mode="json"))
    assert opts.learning_rate == 1e-3
    assert opts.lora.r == 16 and opts.lora.target_modules == ("q_proj",)
    assert opts.lora.alpha == 16
    assert opts.early_stopping is not None and opts.early_stopping.patience == 2
    assert opts.health.max_grad_norm == 50.0 and opts.health.max_weight_abs == 1e3


def test_null_takes_the_default() -> None:
    assert TrainingOptions.from_mapping({"epochs": None, "seed": None}) == TrainingOptions()


def test_an_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(TrainError, match="training.lora has options .*: rank"):
        TrainingOptions.from_mapping({"lora": {"rank": 4}})
