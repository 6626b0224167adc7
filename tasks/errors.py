"""Errors that retrying cannot fix.

A :class:`UserError` is a problem with the pipeline's own data or config: a missing file, a
label typo, a bad value, anomalies in the data. Airflow fails such a task at once instead of
retrying it (``dags/``); infrastructure errors (S3, MLflow, a lost worker) keep their retries.
"""

from __future__ import annotations


class UserError(ValueError):
    """The data or the config must change before the step can succeed; the message says what."""


class DataError(UserError):
    """Source data that cannot be ingested; the message names the file and the column."""


class StepWaiting(Exception):  # noqa: N818 -- not an error: the step goes on when its work ends
    """The step handed its work to another system and waits for it: its MLflow run stays open,
    and running the step again (same try) picks the work up where it is. Under Airflow the task
    defers until then (``dags/kubernetes_training.py``)."""
