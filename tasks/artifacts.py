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

import re

from tasks import storage

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")

STEP_OUTPUTS = ("examples", "statistics", "anomalies", "model", "evaluation", "optimized")


def safe_run_id(run_id: str) -> str:
    """An Airflow run id (``manual__2026-01-01T00:00:00+00:00``) as a path segment."""
    cleaned = _UNSAFE.sub("_", run_id).strip("._")
    if not cleaned:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return cleaned


def pipeline_root(artifact_root: str, pipeline: str) -> str:
    return storage.join(artifact_root, pipeline)


def run_root(artifact_root: str, pipeline: str, run_id: str) -> str:
    return storage.join(artifact_root, pipeline, "runs", safe_run_id(run_id))


def output_uri(artifact_root: str, pipeline: str, run_id: str, name: str) -> str:
    """Where a step of a run publishes ``name`` (one of :data:`STEP_OUTPUTS`)."""
    if name not in STEP_OUTPUTS:
        raise ValueError(f"unknown artifact {name!r}; expected one of {STEP_OUTPUTS}")
    return storage.join(run_root(artifact_root, pipeline, run_id), name)


def checkpoints_uri(artifact_root: str, pipeline: str, run_id: str) -> str:
    """Where ``train_model`` mirrors its checkpoints, so a retry on another machine resumes."""
    return storage.join(run_root(artifact_root, pipeline, run_id), "checkpoints")


def recorded_schema_uri(artifact_root: str, pipeline: str) -> str:
    return storage.join(artifact_root, pipeline, "schema", "schema.pbtxt")


def baseline_statistics_uri(artifact_root: str, pipeline: str) -> str:
    return storage.join(artifact_root, pipeline, "schema", "baseline.json")


def model_dir_uri(model_store: str, model_name: str) -> str:
    return storage.join(model_store, model_name)


def model_version_uri(model_store: str, model_name: str, version: int) -> str:
    return storage.join(model_store, model_name, str(version))
