"""Runner `train`, options: the one home of training defaults, read from the job's `training` map.

The Experiment spec model (controller/api/experiment.py) validates what people write; this
class is what the runner reads, so the runner never restates a default at the point of use.
A unit test (tests/unit/test_train_options.py) keeps the two sets of defaults equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from runners.train.job import TrainError

# Keys of the training map that concern where a run executes, not how it trains.
NOT_TRAINING_OPTIONS = frozenset({"executor"})

T = TypeVar("T")


@dataclass(frozen=True)
class LoraOptions:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class PreferenceOptions:
    beta: float = 0.1
    loss_type: str | None = None  # None: the objective's own default (DEFAULT_LOSS)
    label_smoothing: float = 0.0
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


# Objectives trained by trl's preference trainers (runners/train/preference.py).
PREFERENCE_OBJECTIVES = ("dpo", "orpo", "kto")
DEFAULT_LOSS = {"dpo": "sigmoid", "orpo": "orpo", "kto": "kto"}


@dataclass(frozen=True)
class EarlyStoppingOptions:
    patience: int = 3
    min_delta: float = 0.0


@dataclass(frozen=True)
class HealthOptions:
    max_grad_norm: float = 1e3
    max_weight_abs: float = 1e3
    loss_spike_factor: float = 10.0


@dataclass(frozen=True)
class DistributedOptions:
    nproc_per_node: int = 1
    nnodes: int = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True)
class TrainingOptions:
    method: Literal["lora", "full", "qlora"] = "lora"
    objective: Literal["sft", "cpt", "dpo", "orpo", "kto"] = "sft"
    lora: LoraOptions = field(default_factory=LoraOptions)
    preference: PreferenceOptions = field(default_factory=PreferenceOptions)
    epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_seq_len: int = 256
    packing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    eval_interval: int | None = None
    early_stopping: EarlyStoppingOptions | None = None
    checkpoint_interval: int | None = None
    resume: bool = True
    merge: bool = False
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    health: HealthOptions = field(default_factory=HealthOptions)
    distributed: DistributedOptions = field(default_factory=DistributedOptions)

    @property
    def adapts(self) -> bool:
        """Whether the run trains a LoRA adapter rather than every weight."""
        return self.method in ("lora", "qlora")

    @property
    def prefers(self) -> bool:
        """Whether the run trains on preferences (dpo, orpo, kto) rather than SFT or CPT."""
        return self.objective in PREFERENCE_OBJECTIVES

    @classmethod
    def from_mapping(cls, training: dict[str, Any]) -> TrainingOptions:
        """The job's `training` map -> options; a missing or null value takes the default."""
        values = {k: v for k, v in training.items() if k not in NOT_TRAINING_OPTIONS}
        nested = {
            "lora": LoraOptions,
            "preference": PreferenceOptions,
            "health": HealthOptions,
            "early_stopping": EarlyStoppingOptions,
            "distributed": DistributedOptions,
        }
        for key, kind in nested.items():
            if isinstance(values.get(key), dict):
                values[key] = _build(kind, values[key], f"training.{key}")
        return _build(cls, values, "training")


def _build(kind: type[T], values: dict[str, Any], where: str) -> T:
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainError(
            f"{where} has options this runner does not know: {', '.join(unknown)}; the "
            "controller and the runner come from different llmops versions"
        )
    given = {k: v for k, v in values.items() if v is not None}
    if "target_modules" in given:
        given["target_modules"] = tuple(given["target_modules"])
    return kind(**given)
