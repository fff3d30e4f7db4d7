"""Spec API, kind Experiment: base model + dataset + training config, control and variants."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from controller.api.common import Name, Ref, RepoPath, Resource, Strict, preset_entry

DEFAULT_RUN = "default"


class Lora(Strict):
    r: int = Field(default=8, ge=1, le=1024)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class EarlyStopping(Strict):
    patience: int = Field(default=3, ge=1, description="Evaluations without improvement.")
    min_delta: float = Field(default=0.0, ge=0)


class Health(Strict):
    """Thresholds that stop a run: the message names the step and the layer."""

    max_grad_norm: float = Field(default=1e3, gt=0, description="Exploding gradients above this.")
    max_weight_abs: float = Field(default=1e3, gt=0, description="Exploding weights above this.")
    loss_spike_factor: float = Field(
        default=10.0, gt=1, description="Stop when loss exceeds this times its running mean."
    )


class Executor(Strict):
    """Where the run executes: a local process, or a Kubernetes Job running the same runner."""

    type: Literal["local", "kubernetes"] = "local"
    image: str = Field(
        default="ghcr.io/llmops/runner:0.1.0",
        description="Container image with llmops installed (kubernetes).",
    )
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    cpu: str = "2"
    memory: str = "8Gi"
    gpu: int = Field(default=0, ge=0)
    state_volume_claim: str = Field(
        default="llmops-state",
        description="PersistentVolumeClaim holding the llmops state folder (models, data, runs).",
    )
    state_mount_path: str = Field(default="/llmops", pattern=r"^/\S*$")
    backoff_limit: int = Field(default=2, ge=0, description="Retries; each resumes the run.")
    timeout_s: int = Field(default=86400, ge=60, description="How long to wait for the Job.")


class Distributed(Strict):
    """Several training processes (torchrun): locally on one machine, or nodes of a Kubeflow
    Trainer TrainJob. batch_size stays the global micro-batch, split across the processes."""

    nproc_per_node: int = Field(default=1, ge=1, le=1024, description="Processes per node.")
    nnodes: int = Field(default=1, ge=1, le=4096, description="Nodes (kubernetes executor).")
    strategy: Literal["ddp", "fsdp"] = Field(
        default="ddp",
        description="ddp: every process holds the whole model, gradients averaged; fsdp: "
        "parameters, gradients and optimiser state sharded across the processes (FSDP2).",
    )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


PREFERENCE_OBJECTIVES = ("dpo", "orpo", "kto")
# Loss variants of trl's trainers each objective accepts; the first is the default.
PREFERENCE_LOSSES: dict[str, tuple[str, ...]] = {
    "dpo": ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"),
    "orpo": ("orpo",),
    "kto": ("kto", "apo_zero_unpaired"),
}


class Preference(Strict):
    """Settings of the preference objectives (dpo, orpo, kto), passed to trl's trainers."""

    beta: float = Field(
        default=0.1,
        gt=0,
        le=100,
        description="dpo/kto: how far the policy may move from the reference (higher: less); "
        "orpo: the weight of the odds-ratio term (lambda).",
    )
    loss_type: str | None = Field(
        default=None,
        description="dpo: sigmoid (default), hinge, ipo, robust, bco_pair, sppo_hard, nca_pair, "
        "apo_zero; kto: kto (default) or apo_zero_unpaired; orpo: orpo.",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0, lt=0.5, description="dpo: probability a pair's label is flipped."
    )
    desirable_weight: float = Field(
        default=1.0, gt=0, description="kto: weight of desirable (label true) completions."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, description="kto: weight of undesirable (label false) completions."
    )


class Training(Strict):
    method: Literal["lora", "full", "qlora"] = "lora"
    objective: Literal["sft", "cpt", "dpo", "orpo", "kto"] = Field(
        default="sft",
        description="sft: loss on response tokens only; cpt: continued pre-training; "
        "dpo, orpo, kto: preference training on preference (dpo, orpo, kto) or unpaired "
        "(kto) rows, settings under 'preference'.",
    )
    lora: Lora = Field(default_factory=Lora)
    preference: Preference = Field(
        default_factory=Preference,
        # Left out of the spec digest at its default, so existing experiments keep theirs.
        exclude_if=lambda value: value == Preference(),
    )
    epochs: float | None = Field(default=1.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    learning_rate: float = Field(default=2e-4, gt=0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_seq_len: int = Field(default=256, ge=8, le=131072)
    packing: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0
    eval_interval: int | None = Field(default=None, ge=1, description="Steps between evals.")
    early_stopping: EarlyStopping | None = None
    checkpoint_interval: int | None = Field(default=None, ge=1, description="Steps.")
    resume: bool = Field(default=True, description="Resume from the last checkpoint if present.")
    merge: bool = Field(default=False, description="Also register merged full weights.")
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="dtype the trained weights are stored in; auto: the base version's dtype "
        "(a bfloat16 base gives a bfloat16 fine-tune, whatever 'precision' trained in).",
        # Left out of the spec digest at its default, so existing experiments keep theirs.
        exclude_if=lambda value: value == "auto",
    )
    health: Health = Field(default_factory=Health)
    distributed: Distributed = Field(
        default_factory=Distributed,
        # Left out of the spec digest at its default, so existing experiments keep theirs.
        exclude_if=lambda value: value == Distributed(),
    )
    executor: Executor = Field(default_factory=Executor)

    @model_validator(mode="after")
    def _distributed_settings(self) -> Training:
        world = self.distributed.world_size
        if world == 1:
            return self
        if self.objective in PREFERENCE_OBJECTIVES or self.method == "qlora":
            raise ValueError(
                "distributed training is available for objectives sft and cpt with method "
                f"lora or full, not {self.objective} with {self.method}; remove "
                "training.distributed"
            )
        if self.batch_size % world:
            raise ValueError(
                f"training.batch_size ({self.batch_size}) is split across the world size "
                f"nproc_per_node x nnodes = {world}; make it a multiple of {world}"
            )
        if self.distributed.nnodes > 1 and self.executor.type != "kubernetes":
            raise ValueError(
                f"distributed.nnodes {self.distributed.nnodes} needs executor type "
                "'kubernetes' (a Kubeflow Trainer TrainJob); a local run uses one node"
            )
        return self

    @model_validator(mode="after")
    def _preference_settings(self) -> Training:
        settings = self.preference
        if self.objective not in PREFERENCE_OBJECTIVES:
            if settings != Preference():
                raise ValueError(
                    f"'preference' settings apply to objectives {', '.join(PREFERENCE_OBJECTIVES)}"
                    f", not '{self.objective}'; set training.objective or remove them"
                )
            return self
        allowed = PREFERENCE_LOSSES[self.objective]
        if settings.loss_type is not None and settings.loss_type not in allowed:
            raise ValueError(
                f"preference.loss_type '{settings.loss_type}' is not a loss of objective "
                f"'{self.objective}'; use one of {', '.join(allowed)}"
            )
        if self.objective != "kto" and (
            settings.desirable_weight != 1.0 or settings.undesirable_weight != 1.0
        ):
            raise ValueError(
                "preference.desirable_weight and undesirable_weight weigh kto's unpaired rows; "
                f"objective '{self.objective}' has none"
            )
        if self.objective != "dpo" and settings.label_smoothing:
            raise ValueError(
                f"preference.label_smoothing applies to objective 'dpo', not '{self.objective}'"
            )
        if self.method == "qlora":
            raise ValueError(
                f"objective '{self.objective}' trains with method 'lora' or 'full'; QLoRA is "
                "available for sft and cpt"
            )
        if self.packing:
            raise ValueError(
                f"objective '{self.objective}' trains on whole (prompt, completion) rows; "
                "set packing to false"
            )
        if self.early_stopping is not None:
            raise ValueError(
                f"early_stopping is not available for objective '{self.objective}'; remove it "
                "and set max_steps or epochs"
            )
        return self


class Control(Strict):
    """The group variants are compared against: a model, or one of this experiment's runs."""

    model: Ref | None = None
    run: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Control:
        if (self.model is None) == (self.run is None):
            raise ValueError("give exactly one of 'model' or 'run'")
        return self


class InspectOptions(Strict):
    """A brain scan of each trained version against its base, shown in the report.

    Not a digest input: asking for a scan scans the trained versions, it never retrains."""

    probes: RepoPath | None = Field(
        default=None,
        description="Prompts for activations: a text file (one per line) or JSONL with "
        "'prompt' or 'question'; weights only when unset.",
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Top neurons kept per layer.")
    spread_k: float = Field(
        default=6.0, gt=0, description="Alarm when a norm leaves k robust spreads."
    )
    weightwatcher: bool = Field(
        default=False, description="Power-law alpha per layer (needs the weightwatcher package)."
    )


class ExperimentSpec(Strict):
    """The composed config of one run (after defaults, variants and overrides are applied)."""

    base_model: Ref
    dataset: Ref
    training: Training = Field(default_factory=Training)
    eval_suite: Name | None = None
    register_as: Name | None = Field(
        default=None, description="Registry model name the trained runs are registered under."
    )
    start_from: Name | None = Field(
        default=None,
        description="Another run of this experiment whose registered result this run starts "
        "from instead of base_model (SFT, then DPO): it trains first, a change to it retrains "
        "this run, and it must store full weights (training.method full, or merge: true).",
        # Left out of the spec digest when unset, so existing experiments keep theirs.
        exclude_if=lambda value: value is None,
    )
    control: Control | None = Field(
        default=None, description="Compared against; the untrained base model when unset."
    )
    inspect: InspectOptions | None = None


class ExperimentDocument(ExperimentSpec):
    """What is written under `spec:` of an Experiment, before composition.

    base_model and dataset may come from a preset in the defaults list, so they are checked
    on the composed runs rather than here.
    """

    base_model: Ref | None = None  # type: ignore[assignment]
    dataset: Ref | None = None  # type: ignore[assignment]

    defaults: list[
        Annotated[
            Any,
            AfterValidator(preset_entry),
            Field(description="A preset: 'group/option' or {group: option}, no '..'."),
        ]
    ] = Field(
        default_factory=list,
        description="Hydra defaults list: presets from specs/experiments/_presets/<group>/.",
    )
    variants: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="Run name -> overrides on top of this spec ('training.lora.r: 16'). "
        "The spec as written is the run 'default'.",
    )
    sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="Dotted key -> values; expands into one run per combination.",
    )

    @model_validator(mode="after")
    def _names(self) -> ExperimentDocument:
        if DEFAULT_RUN in self.variants:
            raise ValueError(
                f"'{DEFAULT_RUN}' is the spec as written; give the variant another name"
            )
        for key, values in self.sweep.items():
            if not values:
                raise ValueError(f"sweep '{key}' lists no values")
        return self


class Experiment(Resource):
    """Fine-tuning runs of a base model on a dataset, compared against a control group."""

    KIND: ClassVar[str] = "Experiment"
    FOLDER: ClassVar[str] = "experiments"
    kind: Literal["Experiment"]
    spec: ExperimentDocument
