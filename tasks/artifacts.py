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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import storage
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
