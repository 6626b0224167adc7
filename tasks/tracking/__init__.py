"""Experiment tracking: the only package that imports ``mlflow``.

One MLflow *parent* run per pipeline run (one DAG run, or one ``tfpipe run``) in the
experiment named after the pipeline, and one *child* run per step. The step functions
themselves know nothing of tracking: ``tasks.pipeline`` wraps each in a child run and
records what it returned through an :class:`MlflowTracker`.

The package: :mod:`~tasks.tracking.runs` (the parent run and the steps' child runs),
:mod:`~tasks.tracking.registry` (the Model Registry as the release uses it),
:mod:`~tasks.tracking.models` (the model as an MLflow ``PythonModel``),
:mod:`~tasks.tracking.metrics` (progress, system metrics, benchmark runs) and
:mod:`~tasks.tracking.names` (tags, roles, links into the MLflow UI). What the rest of tfpipe
uses is imported here.
"""

from tasks.tracking.metrics import BatchedProgress, log_benchmark, system_metrics
from tasks.tracking.names import (EXPERIMENT_KIND, MLFLOW_LOGGERS, MODEL_TRAINING, NOTE, artifact_url,
                                  experiment_url, model_version_url, run_url)
from tasks.tracking.registry import MlflowRegistry, registry_version_for
from tasks.tracking.runs import MlflowTracker, MlflowTracking, RunIdentity, flatten, log_through_root_logger

__all__ = ["artifact_url", "BatchedProgress", "EXPERIMENT_KIND", "MLFLOW_LOGGERS", "MODEL_TRAINING", "MlflowRegistry", "MlflowTracker",
           "MlflowTracking", "NOTE", "RunIdentity", "experiment_url", "flatten", "log_benchmark",
           "log_through_root_logger", "model_version_url", "registry_version_for", "run_url", "system_metrics"]
