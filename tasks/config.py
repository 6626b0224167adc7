"""The pipeline config: one frozen, validated object loaded from a pipeline's YAML file.

A pipeline lives in ``<pipelines dir>/<name>.yaml`` (``TFPIPE_PIPELINES_DIR``, default ``dags/pipelines``). Overrides (``tfpipe run --set``,
Airflow ``Param``s) address fields by dotted path (``train.epochs=5``) and are applied to
the raw mapping *before* validation, so an override is checked exactly like the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from tasks.errors import UserError


STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "parameter_server")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class ConfigError(UserError):
    """A pipeline config that cannot be used; the message names the file and the key."""


class TaskType(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"


def _one_of(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
    return value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Frozen):
    """Where the examples come from and how they are split."""

    source: list[str] = Field(
        description="CSV or Parquet URIs (local path, file://, s3://, package://PKG/PATH, or gs://, abfs://, "
        "https://, hdfs:// through fsspec); "
        "Jinja templated with the run's {{ ds }}, {{ ds_nodash }}, {{ run_id }}; globs allowed."
    )
    format: str = Field("auto", description="csv, parquet, or auto (from the file suffix).")
    delimiter: str = Field(",", description="CSV field delimiter: one character, e.g. ';' or a tab.")
    split: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "eval": 0.2},
        description="Split name to fraction; must contain train and eval and sum to 1.",
    )
    split_key: str | None = Field(
        None, description="Column whose value decides the split; default: the whole row."
    )
    num_shards: int = Field(2, ge=1, le=1024, description="TFRecord shards per split.")
    column_types: dict[str, str] = Field(
        default_factory=dict,
        description="Column to int, float or string; overrides the schema and what the data looks like "
        "(e.g. a zip code column that must stay text).",
    )
    trigger_sources: list[str] | None = Field(
        None,
        description="Where a run triggered with a data_source (the Airflow trigger form) may read: patterns "
        "with * (within one path segment), ** (across segments) and {{ ds }}-style variables. Default: the "
        "patterns of data.source itself, so a trigger can only pick among the data the pipeline already reads.",
    )
    max_unlabeled_fraction: float = Field(
        0.5, ge=0, le=1,
        description="Rows without a label are dropped at ingest (counted in the manifest and MLflow); more "
        "than this share of them stops the run (the label is probably the wrong column).",
    )
    compression_level: int = Field(
        1, ge=1, le=9,
        description="GZIP level of the TFRecord shards: 1 is written by ISA-L, the size of zlib's level 1 about "
        "4.8x faster; 2 to 9 by zlib.",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("source")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value or any(not v.strip() for v in value):
            raise ValueError("at least one non-empty source URI is required")
        if any("://" in v and urlparse(v).password is not None for v in value):  # logged as a param: never secrets
            raise ValueError("credentials do not belong in a source URL; give them to its filesystem "
                             "(environment or configuration)")
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n\"":
            raise ValueError(f"must be one character other than a quote or a line break (got {value!r})")
        return value

    @field_validator("column_types")
    @classmethod
    def _known_kinds(cls, value: dict[str, str]) -> dict[str, str]:
        bad = {k: v for k, v in value.items() if v not in ("int", "float", "string")}
        if bad:
            raise ValueError(f"types must be int, float or string (got {bad})")
        return value

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return _one_of(value, ("auto", "csv", "parquet"))

    @field_validator("split")
    @classmethod
    def _valid_split(cls, value: dict[str, float]) -> dict[str, float]:
        missing = {"train", "eval"} - set(value)
        if missing:
            raise ValueError(f"must contain the splits train and eval (missing: {sorted(missing)})")
        if any(f <= 0 for f in value.values()):
            raise ValueError("every split fraction must be > 0")
        if abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1 (got {sum(value.values()):g})")
        return value


GRAPH_PASSES = ("constant_folding", "layout_optimizer", "arithmetic_optimization", "remapping",
                "dependency_optimization", "loop_optimization", "function_optimization", "shape_optimization",
                "debug_stripper", "implementation_selector")


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")  # a Kubernetes quantity, as pods take it


class KubernetesTrainConfig(_Frozen):
    """Each training pod of ``train.runner: kubernetes`` (docs/production.md#training-on-kubernetes).
    The image, namespace and connection are the deployment's (``TFPIPE_TRAIN_IMAGE``, ...), never a run's."""

    cpu: str = Field("4", description="CPU request of each training pod (a Kubernetes quantity: 4, 500m).")
    memory: str = Field("16Gi", description="Memory request and limit of each training pod (16Gi, 512Mi).")
    gpus: int = Field(0, ge=0, le=16, description="nvidia.com/gpu limit of each training pod.")
    backoff_limit: int = Field(
        3, ge=0, le=100, description="Container restarts the Job allows (each resumes from the checkpoint copy) "
        "before it fails; the task's retry then submits a new Job."
    )
    poll_seconds: float = Field(30, ge=1, le=3600, description="How often the waiting task reads the Job's status.")

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not _QUANTITY.match(value):
            raise ValueError(f"must be a Kubernetes quantity such as 4, 500m, 16Gi (got {value!r})")
        return value


class GraphOptions(_Frozen):
    """TensorFlow's graph optimizer (Grappler) passes, on (true), off (false) or as TensorFlow sets
    them (unset), for every graph a step runs: the training and evaluation steps, and the exported
    serving graph wherever the pipeline runs it (evaluation, optimization, the push's checks)."""

    disable_meta_optimizer: bool = Field(False, description="true: no Grappler pass at all.")
    constant_folding: bool | None = Field(None, description="Evaluate the subgraphs whose inputs are constants.")
    layout_optimizer: bool | None = Field(None, description="Convert tensors to the device's faster layout (GPU).")
    arithmetic_optimization: bool | None = Field(None, description="Simplify arithmetic, merge common subexpressions.")
    remapping: bool | None = Field(None, description="Fuse op sequences into one kernel (MatMul + BiasAdd + Relu).")
    dependency_optimization: bool | None = Field(None, description="Remove redundant control dependencies.")
    loop_optimization: bool | None = Field(None, description="Hoist loop invariants, remove dead loop branches.")
    function_optimization: bool | None = Field(None, description="Inline and specialize function calls.")
    shape_optimization: bool | None = Field(None, description="Simplify shape computations.")
    debug_stripper: bool | None = Field(None, description="Remove assertions and debug ops (off by default).")
    implementation_selector: bool | None = Field(None, description="Swap in a device's faster implementation.")

    def tf_options(self) -> dict[str, bool]:
        """The options as ``tf.config.optimizer.set_experimental_options`` takes them (unset left out)."""
        options = {name: value for name in GRAPH_PASSES if (value := getattr(self, name)) is not None}
        return {**options, "disable_meta_optimizer": True} if self.disable_meta_optimizer else options


class EarlyStoppingConfig(_Frozen):
    """Stop when the eval loss has not improved for ``patience`` epochs."""

    patience: int | None = Field(
        10, ge=1, le=10_000, description="Epochs without improvement before stopping; null: never stop early."
    )
    min_delta: float = Field(0.0, ge=0, description="A smaller decrease of the eval loss is no improvement.")
    restore_best: bool = Field(True, description="Export the weights of the best epoch, not the last.")


class TrainConfig(_Frozen):
    """Hyperparameters of the training step."""

    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the train split.")
    batch_size: int = Field(
        32, ge=1, le=65_536,
        description="Global batch size, split across the replicas (each replica gets batch_size / replicas).",
    )
    batch_size_per_replica: int | None = Field(
        None, ge=1, le=65_536,
        description="When set, the global batch is this times the number of replicas (it grows with the "
        "devices and workers), and batch_size is ignored.",
    )
    learning_rate: float = Field(0.01, gt=0, le=10, description="Peak learning rate (after warm-up).")
    lr_scaling: str = Field(
        "none", description="With batch_size_per_replica, the peak learning rate grows with the global batch: "
        "linear (x replicas) or sqrt (x square root of the replicas), reached after the warm-up; none: as set."
    )
    optimizer: str = Field("adam", description="adam, or adamw (decoupled weight decay).")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    lr_schedule: str = Field(
        "cosine", description="After warm-up: cosine (to min_learning_rate_ratio), exponential, or constant."
    )
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of all steps spent warming up linearly.")
    decay_rate: float = Field(0.9, gt=0, le=1, description="Exponential schedule: factor per epoch.")
    min_learning_rate_ratio: float = Field(0.0, ge=0, le=1, description="Cosine schedule: final LR / peak LR.")
    clip_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradients (summed over replicas) to this global norm; null: off."
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    hidden_units: list[int] = Field(default_factory=lambda: [32, 16], description="Dense layer widths.")
    embedding_dim: int = Field(4, ge=1, le=512, description="Embedding width of categorical features.")
    model_fn: str | None = Field(
        None,
        description="Your own model: 'package.module:function', called as function(spec, seed) and returning "
        "a Keras model from the prepared feature dict to logits. Default: built from schema and statistics.",
    )
    strategy: str = Field(
        "auto", description="tf.distribute strategy: auto (mirrored over several GPUs, else one device), one_device, "
        "mirrored, multi_worker or parameter_server (train.workers processes on this machine, or TF_CONFIG).",
    )
    workers: int = Field(
        2, ge=1, le=64,
        description="multi_worker or parameter_server without TF_CONFIG: worker processes started on 127.0.0.1.",
    )
    parameter_servers: int = Field(
        1, ge=1, le=64,
        description="parameter_server without TF_CONFIG: parameter-server processes started on 127.0.0.1 "
        "(beside the chief, which coordinates, and the workers).",
    )
    cpu_replicas: int = Field(
        1, ge=1, le=64,
        description="mirrored without GPUs: split the CPU into this many logical devices (one replica each).",
    )
    steps_per_execution: int = Field(
        8, ge=1, le=10_000, description="Training steps run by one call of the compiled step function."
    )
    checkpoint_every_steps: int = Field(
        100, ge=1, description="Checkpoint interval; a retried task resumes from the latest checkpoint."
    )
    mixed_precision: str = Field(
        "auto", description="Compute in 16 bits, weights and the logits in float32: auto (float16 on a GPU, off on "
        "a CPU), on (float16 on a GPU, else bfloat16: it pays on CPUs with AMX, docs/training.md#precision), "
        "float16 (with loss scaling), bfloat16, or off."
    )
    jit_compile: str = Field(
        "auto", description="XLA: compile the model's part of the train and eval steps: auto (on a GPU; on "
        "CPU it measured slower, docs/training.md), on, or off."
    )
    shuffle_buffer: int = Field(10_000, ge=1, description="Examples in the shuffle buffer.")
    cache: str = Field(
        "auto", description="Keep the parsed train examples (and eval examples, when both splits fit) in memory "
        "after the first epoch: auto (when they fit in a quarter of the free memory), memory, or none."
    )
    deterministic: bool = Field(
        False, description="Same seed, same result: deterministic tf.data order and TensorFlow ops (slower)."
    )
    autotune: bool = Field(
        True, description="Let tf.data's autotuner set the input pipelines' parallelism and prefetch. false: "
        "every parallel stage on every usable core and the autotuner off, steadier on machines with few cores."
    )
    runner: str = Field(
        "local", description="Where training runs: local (this process, or train.workers processes here), or "
        "kubernetes (an Indexed Job of pods that the task submits and waits for, docs/production.md)."
    )
    kubernetes: KubernetesTrainConfig = Field(KubernetesTrainConfig(), description="train.runner kubernetes: each pod.")
    tensorboard: bool = Field(True, description="Write TensorBoard logs (an MLflow artifact).")
    graph_options: GraphOptions = Field(
        GraphOptions(), description="Grappler passes on or off (docs/training.md#graph-optimizations); "
        "default: TensorFlow's."
    )
    profile_steps: tuple[int, int] | None = Field(
        None, description="[first, last]: a TensorFlow Profiler trace of these training steps (1-based, "
        "inclusive), the input pipeline included, beside the TensorBoard logs (an MLflow artifact); "
        "`tfpipe trace` summarizes it. Off by default."
    )
    seed: int = Field(42, description="Seed for weights and shuffling.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        return _one_of(value, STRATEGIES)

    @field_validator("runner")
    @classmethod
    def _known_runner(cls, value: str) -> str:
        return _one_of(value, ("local", "kubernetes"))

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return _one_of(value, ("adam", "adamw"))

    @field_validator("lr_scaling")
    @classmethod
    def _known_scaling(cls, value: str) -> str:
        return _one_of(value, ("none", "linear", "sqrt"))

    @field_validator("lr_schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return _one_of(value, ("cosine", "exponential", "constant"))

    @field_validator("mixed_precision", "jit_compile", mode="before")
    @classmethod
    def _auto_on_or_off(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool):  # YAML reads a bare on/off as a boolean
            return "on" if value else "off"
        choices = ("auto", "on", "off") + (("float16", "bfloat16") if info.field_name == "mixed_precision" else ())
        return _one_of(value, choices) if isinstance(value, str) else value

    @field_validator("profile_steps")
    @classmethod
    def _step_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not 1 <= value[0] <= value[1] < value[0] + 1000:
            raise ValueError("must be [first, last] with 1 <= first <= last, at most 1000 steps (a trace grows with "
                             f"every step), got {list(value)}")
        return value

    @field_validator("cache")
    @classmethod
    def _known_cache(cls, value: str) -> str:
        return _one_of(value, ("auto", "memory", "none"))

    @field_validator("model_fn")
    @classmethod
    def _module_path(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
            raise ValueError(f"must look like 'package.module:function' (got {value!r})")
        return value


HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "r2")
TASK_METRICS = {
    "binary": ("accuracy", "log_loss", "auc", "precision", "recall"),
    "multiclass": ("accuracy", "log_loss", "auc", "precision", "recall"),
    "regression": ("rmse", "mae", "r2"),
}


class MetricGate(_Frozen):
    """Bounds on one evaluation metric.

    ``lower_bound``/``upper_bound`` are absolute. ``beat_baseline_by`` asks the metric to beat
    the trivial baseline (the train split's majority class and class shares, or its mean) on
    the same eval examples by at least this much, in the metric's better direction.
    ``max_decrease``/``max_increase`` bound the change against the champion (the version the
    model store serves); with no champion (cold start) they are skipped, as in TFX.
    """

    lower_bound: float | None = None
    upper_bound: float | None = None
    beat_baseline_by: float | None = Field(None, ge=0)
    max_decrease: float | None = Field(None, ge=0)
    max_increase: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _some_bound(self) -> MetricGate:
        bounds = (self.lower_bound, self.upper_bound, self.beat_baseline_by, self.max_decrease, self.max_increase)
        if all(v is None for v in bounds):
            raise ValueError("a gated metric needs at least one bound")
        return self


def default_gate_metrics(task: str) -> dict[str, MetricGate]:
    """The gate of a pipeline that names none: beat the trivial baseline, do not fall behind the champion."""
    if task == "regression":
        return {"r2": MetricGate(beat_baseline_by=0.05, max_decrease=0.01)}
    metrics = {"accuracy": MetricGate(beat_baseline_by=0.01, max_decrease=0.01)}
    if task == "binary":
        metrics["auc"] = MetricGate(beat_baseline_by=0.05, max_decrease=0.01)
    return metrics


class SliceGate(_Frozen):
    """Metrics for every value of one column (a slice, e.g. ``island=Dream``), optionally gated."""

    feature: str = Field(description="A string or integer column of the examples (not the label).")
    metrics: dict[str, MetricGate] = Field(
        default_factory=dict,
        description="Bounds every slice of this column must meet (change bounds: against the champion on the "
        "same slice); empty: the slices are measured, not gated.",
    )
    min_examples: int = Field(
        10, ge=1, description="A slice with fewer eval examples is measured but not gated (too noisy)."
    )


class GateConfig(_Frozen):
    metrics: dict[str, MetricGate] = Field(
        default_factory=dict,
        description="Metric name to its bounds; every check must pass for a blessing. Default (none given): "
        "binary: accuracy and AUC beat the trivial baseline by 0.01 and 0.05; multiclass: accuracy by 0.01; "
        "regression: r2 by 0.05; each at most 0.01 below the champion.",
    )
    slices: list[SliceGate] = Field(
        default_factory=list, description="Columns whose values slice the eval split: metrics per slice, gated "
        "when bounds are given.",
    )


OPTIMIZE_VARIANTS = ("tflite_float32", "tflite_float16", "tflite_dynamic_range", "tflite_int8", "qat_int8",
                     "pruned", "tensorrt_fp16")
# qat_int8 is opt-in: it fine-tunes the model on every run.
DEFAULT_OPTIMIZE_VARIANTS = tuple(name for name in OPTIMIZE_VARIANTS if name != "qat_int8")


class PruningConfig(_Frozen):
    """Magnitude pruning (tensorflow-model-optimization) of the dense layers, then fine-tuning."""

    target_sparsity: float = Field(0.5, gt=0, lt=1, description="Share of each dense kernel set to zero.")
    epochs: int = Field(2, ge=1, le=1000, description="Fine-tuning epochs over the train split.")
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Fine-tuning batch size; default: train.batch_size."
    )
    learning_rate: float = Field(1e-3, gt=0, le=1)


class QatConfig(_Frozen):
    """Quantization-aware training (tensorflow-model-optimization) of the dense layers, for ``qat_int8``."""

    epochs: int = Field(
        1, ge=1, le=1000, description="Fine-tuning epochs over the train split, with fake quantization."
    )
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Fine-tuning batch size; default: train.batch_size."
    )
    learning_rate: float = Field(
        1e-4, gt=0, le=1, description="Fine-tuning learning rate (Adam): small, the model is trained already."
    )


class OptimizeConfig(_Frozen):
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Classifiers: a variant losing more accuracy than this (absolute) is rejected."
    )
    max_rmse_increase: float = Field(
        0.05, ge=0, le=10,
        description="Regressors: a variant whose RMSE is more than this share above the original's is rejected "
        "(relative: 0.05 is 5%, whatever the label's unit).",
    )
    variants: list[str] = Field(
        default_factory=lambda: list(DEFAULT_OPTIMIZE_VARIANTS),
        description="Variants to build and measure: " + ", ".join(OPTIMIZE_VARIANTS) + ". Default: all but "
        "qat_int8, which is opt-in (it fine-tunes the model on every run).",
    )
    representative_examples: int = Field(
        200, ge=1, le=100_000, description="Train examples that calibrate int8 quantization."
    )
    pruning: PruningConfig = PruningConfig()
    qat: QatConfig = QatConfig()
    latency_runs: int = Field(200, ge=10, le=100_000, description="Batch-1 calls timed per variant (p50, p99).")
    throughput_batch: int = Field(1024, ge=1, le=1_000_000, description="Batch size of the throughput measurement.")

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, value: list[str]) -> list[str]:
        for name in value:
            _one_of(name, OPTIMIZE_VARIANTS)
        return value


class PushConfig(_Frozen):
    """How a blessed model goes into the model store."""

    keep_versions: int = Field(
        5, ge=1, le=10_000,
        description="Versions kept in the store: the newest N and the champion; older ones are removed only "
        "once a newer version is champion.",
    )
    warmup_requests: int = Field(
        16, ge=1, le=1000,
        description="Eval examples written as TF Serving warm-up requests (assets.extra); the push's checks replay them.",
    )
    publish_variants: bool = Field(
        True, description="Push the optimized variants that were kept with the model (<version>/variants/)."
    )
    serving_timeout_seconds: float = Field(
        300, gt=0, le=86_400,
        description="With TFPIPE_SERVING_URL set: how long TF Serving may take to make a pushed version AVAILABLE.",
    )
    skip_identical: bool = Field(
        True, description="A model whose weights equal the champion's (the same data and config retrained "
        "deterministically) is not pushed as a new version; the run says which version it equals.",
    )
    approval: Literal["none", "required"] = Field(
        "none", description="required: a reviewer approves or rejects each blessed model in the Airflow UI (task "
        "approve_release) before it is pushed; a rejection is recorded with its reason and nothing is served.",
    )
    approval_timeout_hours: float = Field(
        72, gt=0, le=24 * 365,
        description="With approval required: how long a model waits for a reviewer; unanswered, it is rejected.",
    )


class DistanceConfig(_Frozen):
    """How far a feature's distribution may move between two samples (see tasks/anomalies.py).

    A feature is flagged only when its distance exceeds both the effect size given here and
    what chance allows for the two sample sizes at ``validation.significance``. Numeric
    features: the Kolmogorov-Smirnov distance of their quantiles; categorical features: the
    largest difference of a category's share (L-infinity). ``null`` disables a check.
    """

    numeric_ks: float | None = Field(0.1, gt=0, le=1, description="Effect size for numeric features (KS distance).")
    categorical_linf: float | None = Field(
        0.1, gt=0, le=1, description="Effect size for categorical features (a category's share, L-infinity)."
    )
    numeric_jsd: float | None = Field(
        None, gt=0, le=1,
        description="Also apply TFDV's Jensen-Shannon divergence of numeric histograms at this threshold (off: its "
        "equal-width buckets move with outliers and it does not account for sample size).",
    )
    features: dict[str, float | None] = Field(
        default_factory=dict, description="Per-feature effect size (null: the feature is not compared)."
    )


class ValidateConfig(_Frozen):
    """How statistics are computed and what stops a run."""

    engine: str = Field(
        "auto",
        description="auto (= streaming), streaming (TFDV's in-memory generators over the TFRecords, batch by "
        "batch), in_memory (one batch, small data only) or beam (tfdv.generate_statistics_from_tfrecord).",
    )
    beam_pipeline_args: list[str] = Field(
        default_factory=list,
        description="Beam pipeline options for engine beam, e.g. [--runner=FlinkRunner, --parallelism=8].",
    )
    schema_file: str | None = Field(
        None,
        description="Curated schema (pbtxt) relative to the pipeline file; default <name>.schema.pbtxt beside "
        "it when that exists. A curated schema is authoritative: it is never inferred or overwritten.",
    )
    drift: DistanceConfig = Field(
        default_factory=DistanceConfig,
        description="This run's train split against the train split of the last run that passed validation and "
        "training.",
    )
    skew: DistanceConfig = Field(
        default_factory=DistanceConfig,
        description="The eval split against the train split of the same run (a random sample of the same source: "
        "only a split key, or a bug, makes them differ beyond chance).",
    )
    significance: float = Field(
        0.001, gt=0, lt=0.5,
        description="Chance of flagging a distance that is only sampling noise, over all features of one comparison.",
    )
    max_unseen_fraction: float = Field(
        0.05, ge=0, le=1,
        description="Share of a column's values that may lie outside the domain of a recorded or inferred schema "
        "(rare categories fall into one split by chance); more when train is full of values seen once.",
    )
    max_missing_increase: float = Field(
        0.05, ge=0, le=1,
        description="How much more often a column may be missing than the recorded or inferred schema saw.",
    )

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        return _one_of(value, ("auto", "streaming", "in_memory", "beam"))


class PipelineConfig(_Frozen):
    """A validated pipeline; build with :func:`load_pipeline`."""

    name: str
    description: str = ""
    schedule: str | None = "@daily"
    model_name: str
    data: DataConfig
    label: str
    task: TaskType
    features: list[str] | None = Field(
        None, description="Feature columns; default: every column but the label."
    )
    validation: ValidateConfig = ValidateConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    push: PushConfig = PushConfig()
    cache: bool = Field(
        False, description="Reuse an earlier run's result for a step whose inputs, config and code are unchanged "
        "(ingest to optimize; see tasks/cache.py). Off by default: a key cannot see everything a step depends on, "
        "and a reused model is not a new sample of a non-deterministic training.",
    )
    tags: list[str] = Field(default_factory=list)

    @field_validator("name", "model_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} must start with a letter and hold only letters, digits, '_' or '-'"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_gate(cls, data: Any) -> Any:
        """No gate metrics in the file: the default gate of the task (:func:`default_gate_metrics`)."""
        if not isinstance(data, Mapping) or data.get("task") not in TASK_METRICS:
            return data
        gate = data.get("gate") or {}
        if isinstance(gate, Mapping) and not gate.get("metrics"):
            defaults = {k: v.model_dump(exclude_none=True) for k, v in default_gate_metrics(data["task"]).items()}
            data = {**data, "gate": {**gate, "metrics": defaults}}
        return data

    @model_validator(mode="after")
    def _gate_metrics_fit_the_task(self) -> PipelineConfig:
        known = TASK_METRICS[self.task.value]
        places = [("gate.metrics", self.gate.metrics)] + [
            (f"gate.slices.{i}.metrics", item.metrics) for i, item in enumerate(self.gate.slices)]
        for place, metrics in places:
            for metric in metrics:
                if metric not in known:
                    raise ValueError(f"{place}.{metric}: task {self.task.value} has no metric {metric!r} "
                                     f"(its metrics: {', '.join(known)})")
        return self

    @model_validator(mode="after")
    def _label_not_a_slice(self) -> PipelineConfig:
        for i, item in enumerate(self.gate.slices):
            if item.feature == self.label:
                raise ValueError(f"gate.slices.{i}.feature: the label {self.label!r} cannot slice the eval split")
        return self

    @model_validator(mode="after")
    def _label_not_a_feature(self) -> PipelineConfig:
        if self.features is not None:
            if self.label in self.features:
                raise ValueError(f"the label {self.label!r} cannot also be listed in features")
            if not self.features:
                raise ValueError("features, when given, must list at least one column")
        return self


def resolve_pipeline_path(pipeline: str | Path, pipelines_dir: Path | None = None) -> Path:
    """A path to a YAML file, or a pipeline name looked up in ``pipelines_dir`` (the setting
    ``TFPIPE_PIPELINES_DIR``, :class:`tasks.settings.Settings`)."""
    candidate = Path(pipeline)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"pipeline file {candidate} does not exist")
        return candidate.resolve()
    if pipelines_dir is None:
        raise ConfigError(f"{str(pipeline)!r} is not a path to a YAML file, and no pipelines directory is set "
                          "(TFPIPE_PIPELINES_DIR) to look the name up in")
    if not _NAME_RE.fullmatch(str(pipeline)):
        raise ConfigError(f"{str(pipeline)!r} is neither a pipeline name nor a path to a .yaml file")
    named = pipelines_dir / f"{pipeline}.yaml"
    if not named.is_file():
        known = ", ".join(p.stem for p in discover_pipelines(pipelines_dir)) or "none"
        raise ConfigError(f"no pipeline named {pipeline!r} in {pipelines_dir} (known: {known})")
    return named


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["train.epochs=5", ...]`` to ``{"train.epochs": 5}``; values are YAML scalars."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return overrides


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a copy of ``raw``; an unknown key is reported by validation."""
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for dotted, value in overrides.items():
        node = result
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return result


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid pipeline config {source}:"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"  {key}: {message}")
    return "\n".join(lines)


def config_from_mapping(raw: Mapping[str, Any], source: str, default_name: str | None = None) -> PipelineConfig:
    """Validate a raw mapping; errors name ``source`` and every bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid pipeline config {source}: the top level must be a mapping")
    data = dict(raw)
    if default_name is not None:
        data.setdefault("name", default_name)
    data.setdefault("model_name", data.get("name"))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(source, error)) from None


def load_pipeline(pipeline: str | Path, overrides: Mapping[str, Any] | None = None,
                  pipelines_dir: Path | None = None) -> PipelineConfig:
    """Load, override and validate a pipeline config.

    Args:
        pipeline: A path to a YAML file, or a name looked up in ``pipelines_dir``.
        overrides: Dotted keys to values, applied before validation.

    Raises:
        ConfigError: The file is missing, is not YAML, or a key is unknown or invalid.
    """
    path = resolve_pipeline_path(pipeline, pipelines_dir)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"pipeline config {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid pipeline config {path}: the top level must be a mapping")
    if overrides:
        raw = apply_overrides(raw, overrides)
    return config_from_mapping(raw, str(path), default_name=path.stem)


def discover_pipelines(directory: Path) -> list[Path]:
    """Every pipeline YAML file in ``directory``, sorted by name."""
    return sorted(directory.glob("*.yaml"))


def pipelines_by_model(directory: Path | None) -> dict[str, str]:
    """Model name to the name of the pipeline that pushes it; a broken config is skipped (its own
    DAG, or ``tfpipe check``, reports it)."""
    found: dict[str, str] = {}
    for path in discover_pipelines(directory) if directory is not None else []:
        try:
            config = load_pipeline(path)
        except ConfigError:
            continue
        found.setdefault(config.model_name, config.name)
    return found
