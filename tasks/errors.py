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
