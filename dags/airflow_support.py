"""What every tfpipe DAG shares: default task arguments and binding Airflow's connections.

Nothing here runs while Airflow parses DAG files: connections are read inside tasks only.
"""

from __future__ import annotations

import os
from datetime import timedelta

# XCom keys a task pushes so the Airflow UI can link to its MLflow run (see plugins/).
MLFLOW_RUN_URL = "mlflow_run_url"
MLFLOW_EXPERIMENT_URL = "mlflow_experiment_url"

DEFAULT_ARGS = {
    "owner": "tfpipe",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}


def export_aws_connection() -> None:
    """Bind the ``aws_default`` connection to the standard AWS variables when those are unset.

    Runs inside a task only (never while parsing), so the DAG processor makes no look-ups.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return
    from airflow.sdk import Connection

    try:
        conn = Connection.get("aws_default")
    except Exception:  # noqa: BLE001 - an absent connection leaves boto3's own chain
        return
    extra = conn.extra_dejson or {}
    for key, value in (
        ("AWS_ACCESS_KEY_ID", conn.login),
        ("AWS_SECRET_ACCESS_KEY", conn.password),
        ("AWS_ENDPOINT_URL", extra.get("endpoint_url")),
        ("AWS_DEFAULT_REGION", extra.get("region_name")),
    ):
        if value:
            os.environ.setdefault(key, value)


def model_names() -> list[str]:
    """The models the pipelines push (``dags/pipelines/*.yaml``)."""
    from tasks.config import pipelines_by_model

    return sorted(pipelines_by_model())


def model_asset(model_name: str):
    """The Airflow Asset a push updates: one per model, whatever store holds it."""
    from airflow.sdk import Asset

    return Asset(name=f"{model_name}_model", uri=f"tfpipe://models/{model_name}")
