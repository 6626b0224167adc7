"""What every tfpipe DAG shares: default task arguments and binding Airflow's connections.

Nothing here runs while Airflow parses DAG files: connections are read inside tasks only.
"""

from __future__ import annotations

import os
from datetime import timedelta

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
