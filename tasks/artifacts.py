"""The artifact layout: the one place that knows where each step writes.

::

    <artifact_root>/<pipeline>/
        schema/schema.pbtxt                 the pipeline's recorded schema (first run infers it)
        schema/baseline.json                statistics of the last run whose data passed (drift)
        runs/<run>/examples/                TFRecord shards per split + manifest.json
        runs/<run>/statistics/              TFDV statistics per split
        runs/<run>/anomalies/               anomalies per split + a readable report
        runs/<run>/model/                   SavedModel (model/saved_model) + checkpoints + history
        runs/<run>/checkpoints/             training checkpoints while train_model runs (S3 roots only)
        runs/<run>/evaluation/              metrics.json, blessing.json
        runs/<run>/optimized/               model variants (.tflite) + report.json

    <model_store>/<model>/<version>/        TensorFlow Serving layout, saved_model.pb last
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from tasks import storage
from tasks.config import HIGHER_IS_BETTER
from tasks.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")  # as tasks.config requires of pipeline and model names

# Inside the examples artifact (runs/<run>/examples/): the shards of each split, their counts,
# the columns and their kinds, the sources' digests and the label's statistics.
EXAMPLES_MANIFEST = "manifest.json"
STEP_OUTPUTS = ("examples", "statistics", "anomalies", "model", "evaluation", "optimized")
# The SavedModel signature that serves (TensorFlow Serving's default): the export writes it, the
# evaluation, the warm-up requests and the serving checks call it.
SERVING_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "predict_features"  # one rank-1 tensor per raw feature
# Inside the model artifact (runs/<run>/model/).
SAVED_MODEL_DIR = "saved_model"
MODEL_SPEC_FILE = "model_spec.json"
HISTORY_FILE = "history.json"
TENSORBOARD_DIR = "tensorboard"
# Inside the statistics and anomalies artifacts (runs/<run>/statistics/, runs/<run>/anomalies/).
SCHEMA_FILE = "schema.pbtxt"
STATS_FILE = "FeatureStats.pb"
OVERVIEW_FILE = "overview.html"
ANOMALIES_REPORT = "report.json"
# Inside the evaluation artifact (runs/<run>/evaluation/).
BLESSING_FILE = "blessing.json"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
# Inside the optimized artifact (runs/<run>/optimized/); a push publishes the kept variants with them.
REPORT_FILE = "report.json"
CHART_FILE = "tradeoff.png"
# Inside the model store (<model_store>/): the TensorFlow Serving config, and per model its
# champion pointer; per version its SavedModel (saved_model.pb written last), its manifest, the
# warm-up requests and the optimized variants.
MODELS_CONFIG = "models.config"
CHAMPION_FILE = "champion.json"
SAVED_MODEL_PB = "saved_model.pb"
MANIFEST_FILE = "tfpipe_manifest.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
VARIANTS_DIR = "variants"


def safe_run_id(run_id: str) -> str:
    """An Airflow run id (``manual__2026-01-01T00:00:00+00:00``) as one path segment. An id that
    had to change gets a digest of the original, so distinct ids never share a folder."""
    cleaned = _UNSAFE.sub("_", run_id).strip("._")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    if cleaned != run_id or len(cleaned) > 120:
        cleaned = f"{cleaned[:100]}-{hashlib.sha256(run_id.encode('utf-8')).hexdigest()[:10]}"
    return cleaned


def is_name(name: str) -> bool:
    return isinstance(name, str) and bool(_NAME.fullmatch(name))


def checked_name(name: str, what: str = "name") -> str:
    """A pipeline or model name that is safe as one path segment (``..``, ``/`` and the like are refused)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"{what} {name!r} must start with a letter and hold only letters, digits, '_' or '-' "
                         "(at most 64 characters)")
    return name


def checked_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"model version {version!r} must be a positive integer")
    return version


def pipeline_root(artifact_root: str, pipeline: str) -> str:
    return storage.join(artifact_root, checked_name(pipeline, "pipeline name"))


def run_root(artifact_root: str, pipeline: str, run_id: str) -> str:
    return storage.join(pipeline_root(artifact_root, pipeline), "runs", safe_run_id(run_id))


def output_uri(artifact_root: str, pipeline: str, run_id: str, name: str) -> str:
    """Where a step of a run publishes ``name`` (one of :data:`STEP_OUTPUTS`)."""
    if name not in STEP_OUTPUTS:
        raise ValueError(f"unknown artifact {name!r}; expected one of {STEP_OUTPUTS}")
    return storage.join(run_root(artifact_root, pipeline, run_id), name)


def checkpoints_uri(artifact_root: str, pipeline: str, run_id: str) -> str:
    """Where ``train_model`` mirrors its checkpoints, so a retry on another machine resumes."""
    return storage.join(run_root(artifact_root, pipeline, run_id), "checkpoints")


def training_job_uri(artifact_root: str, pipeline: str, run_id: str) -> str:
    """Where ``train.runner: kubernetes`` puts each try's request and its chief's result."""
    return storage.join(run_root(artifact_root, pipeline, run_id), "training_job")


def recorded_schema_uri(artifact_root: str, pipeline: str) -> str:
    return storage.join(pipeline_root(artifact_root, pipeline), "schema", "schema.pbtxt")


def baseline_statistics_uri(artifact_root: str, pipeline: str) -> str:
    return storage.join(pipeline_root(artifact_root, pipeline), "schema", "baseline.json")


def model_dir_uri(model_store: str, model_name: str) -> str:
    return storage.join(model_store, checked_name(model_name, "model name"))


def model_version_uri(model_store: str, model_name: str, version: int) -> str:
    return storage.join(model_dir_uri(model_store, model_name), str(checked_version(version)))


@dataclass(frozen=True)
class Examples:
    """A published examples artifact as a step reads it: the manifest, read once (:meth:`open`),
    and each split's shards, copied from S3 into the cache at most once."""

    uri: str
    manifest: dict[str, Any]
    _local: dict[Path, Path] = field(default_factory=dict, compare=False, repr=False)  # cache dir -> local copy

    @classmethod
    def open(cls, uri: str) -> Examples:
        """The artifact at ``uri``; raises :class:`storage.ArtifactNotFoundError` unless completely published."""
        storage.require_complete(uri)
        return cls(uri, json.loads(storage.read_bytes(storage.join(uri, EXAMPLES_MANIFEST))))

    @property
    def columns(self) -> dict[str, str]:
        """Column name to its kind (``int``, ``float``, ``string``)."""
        return self.manifest["columns"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def count(self, split: str) -> int:
        return int(self._split(split)["count"])

    @property
    def label_stats(self) -> dict[str, Any] | None:
        return self.manifest.get("label_stats")

    @property
    def sources(self) -> list[dict[str, Any]]:
        return self.manifest["sources"]

    def files(self, split: str, cache_dir: Path) -> list[str]:
        """Local paths of the split's GZIP TFRecord shards (the artifact located, or listed on S3, once)."""
        if cache_dir not in self._local:
            self._local[cache_dir] = storage.materialize(self.uri, cache_dir)
        return split_files(self._local[cache_dir], self.manifest, split)

    def _split(self, split: str) -> dict[str, Any]:
        _require_split(self.manifest, split)
        return self.manifest["splits"][split]


def split_files(local_examples: Path, manifest: dict[str, Any], split: str) -> list[str]:
    """The shards of ``split`` in a local copy of an examples artifact."""
    _require_split(manifest, split)
    return [str(local_examples / rel) for rel in manifest["splits"][split]["files"]]


def _require_split(manifest: dict[str, Any], split: str) -> None:
    if split not in manifest["splits"]:
        raise KeyError(f"the examples have no split {split!r} (splits: {sorted(manifest['splits'])})")


# --- records: what each step returns, as it travels between steps ---------------------------------
#
# A step returns a typed record; through Airflow's XCom (and between ``tfpipe run``'s steps) it
# travels as ``to_dict()``, plain JSON, and the next step reads it back with ``of()``.

R = TypeVar("R", bound="Record")


class Record:
    """A step's record: ``to_dict()`` to travel, ``of()`` to read back (keys it does not know,
    such as derived ones, are left out)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def of(cls: type[R], data: R | Mapping[str, Any]) -> R:
        if isinstance(data, cls):
            return data
        known = {item.name for item in fields(cls) if item.init}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class ExamplesArtifact(Record):
    """What ``ingest_examples`` published: the artifact's URI and what the run logs of it
    (:class:`Examples` opens the artifact itself)."""

    uri: str
    counts: dict[str, int]
    columns: dict[str, str]
    label: str
    rows: int = 0
    seconds: float = 0.0
    widened: dict[str, str] = field(default_factory=dict)
    unlabeled: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationArtifact(Record):
    """What ``validate_examples`` published: statistics, the schema in force and the anomalies."""

    statistics_uri: str
    schema_uri: str
    anomalies_uri: str
    schema_source: str  # curated, recorded or inferred
    anomalies: int
    baseline_run: str | None = None
    seconds: float = 0.0

    @property
    def schema_inferred(self) -> bool:
        return self.schema_source == "inferred"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema_inferred": self.schema_inferred}


@dataclass(frozen=True)
class ModelArtifact(Record):
    """What ``train_model`` published: the model folder (SavedModel, spec, history) and how it trained."""

    uri: str
    saved_model_uri: str
    epochs: int
    steps: int
    resumed_from_step: int
    final_metrics: dict[str, float]
    strategy: str
    replicas: int
    workers: int = 1
    best_epoch: int = 0
    stopped_early: bool = False
    examples_per_second: float = 0.0
    traces: dict[str, int] = field(default_factory=dict)
    mixed_precision: bool = False
    precision: str = "float32"  # the Keras dtype policy it trained under (train.mixed_precision)
    jit_compile: bool = False  # the train and eval steps' model part compiled with XLA
    checkpoint_files_mirrored: int = 0
    mlflow_run_id: str | None = None  # the run that logged it as an MLflow model
    mlflow_model_id: str | None = None  # that MLflow 3 logged model: what a push registers, what metrics link to

    def saved_model(self, cache_dir: Path) -> Path:
        """A local copy of the SavedModel (the model folder copied from S3 at most once per cache)."""
        return storage.materialize(self.uri, cache_dir) / SAVED_MODEL_DIR


@dataclass(frozen=True)
class Check:
    """One check of the gate: a metric (of the whole eval split or a slice) against its bound."""

    metric: str
    kind: str  # lower_bound, upper_bound, max_decrease, max_increase, beat_baseline_by, min_examples
    value: float | None
    bound: float | None
    baseline: float | None
    passed: bool | None  # None: skipped
    slice: str | None = None  # "column=value"; None: the whole eval split
    note: str | None = None  # why a check was skipped
    trivial: float | None = None  # the trivial baseline's value of the metric, where it is known

    def describe(self) -> str:
        where = f"[{self.slice}] " if self.slice else ""
        if self.passed is None:
            return f"{where}{self.metric} {self.kind}: skipped ({self.note or 'no champion to compare with'})"
        verdict = "passed" if self.passed else "FAILED"
        if self.kind == "beat_baseline_by":
            op = ">=" if self.metric in HIGHER_IS_BETTER else "<="
            return (f"{where}{self.metric} = {self.value:.4f} {op} trivial baseline {self.trivial:.4f} "
                    f"{'+' if op == '>=' else '-'} {abs(self.bound - self.trivial):.4f}: {verdict}")
        if self.kind in ("lower_bound", "upper_bound"):
            op = ">=" if self.kind == "lower_bound" else "<="
            return f"{where}{self.metric} = {self.value:.4f} {op} {self.bound:.4f}: {verdict}"
        op = ">=" if self.kind == "max_decrease" else "<="
        sign = "-" if self.kind == "max_decrease" else "+"
        return (f"{where}{self.metric} = {self.value:.4f} {op} champion {self.baseline:.4f} {sign} "
                f"{abs(self.bound - self.baseline):.4f}: {verdict}")


@dataclass(frozen=True)
class Blessing(Record):
    """The gate's verdict on a model (``evaluate_model``), as published in ``blessing.json``."""

    uri: str
    model_uri: str
    blessed: bool
    metrics: dict[str, float]
    baseline: dict[str, Any] | None
    checks: tuple[Check, ...]
    slice_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # The trivial model's metrics on the same examples: {"description", "metrics", "slice_metrics"}.
    trivial: dict[str, Any] | None = None
    # The champion this blessing is valid against ({"version", "generation"}; None: a cold start):
    # the push promotes only while it still serves.
    evaluated_against: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        checks = tuple(c if isinstance(c, Check) else Check(**c) for c in self.checks)
        object.__setattr__(self, "checks", checks)

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks]

    @property
    def failed_reasons(self) -> list[str]:
        return [c.describe() for c in self.checks if c.passed is False]

    @property
    def evaluated_state(self) -> tuple[int, int | None] | None:
        """``(version, generation)`` of the champion it was evaluated against; None: a cold start."""
        against = self.evaluated_against
        return (int(against["version"]), against.get("generation")) if against else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": self.reasons}

    @classmethod
    def read(cls, evaluation_uri: str) -> Blessing:
        """The blessing published at ``evaluation_uri`` (what the push re-checks)."""
        storage.require_complete(evaluation_uri)
        return cls.of(json.loads(storage.read_bytes(storage.join(evaluation_uri, BLESSING_FILE))))


@dataclass(frozen=True)
class OptimizedArtifact(Record):
    """What ``optimize_model`` published: the variants and their report (size, latency, quality)."""

    uri: str
    report: dict[str, Any]

    @property
    def kept(self) -> list[str]:
        return [name for name, row in self.report["variants"].items() if row.get("kept")]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept": self.kept}
