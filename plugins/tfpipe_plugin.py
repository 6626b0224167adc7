"""Airflow UI extensions joining Airflow and MLflow.

* **Extra links** on every task: "MLflow run" (the task's own MLflow run) and "MLflow
  experiment" (the pipeline's experiment). A pipeline task pushes both URLs to XCom as soon as
  its run exists (``dags/tfpipe_pipelines.py``), so a failed task links to its run too.
  Airflow 3 computes plugin links in the API server, which reads them from the metadata
  database; a task without them (not a pipeline task) shows no link.
* **External view**: "MLflow" in the Browse menu, opening the MLflow UI.
* **Listener** (:mod:`tfpipe_listener`): ends a DAG run's MLflow parent run with its state.

Only wiring lives here: Airflow never reloads plugins.
"""

from __future__ import annotations

import json
import logging

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from tasks.settings import MLFLOW_EXPERIMENT_URL, MLFLOW_RUN_URL
from plugins import tfpipe_listener

log = logging.getLogger(__name__)


def read_xcom(ti_key, key: str):
    """A task instance's XCom, read from the metadata database (links are computed in the API server)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(key=key, run_id=ti_key.run_id, dag_ids=ti_key.dag_id, task_ids=ti_key.task_id,
                               map_indexes=ti_key.map_index).with_only_columns(XComModel.value)
        ).first()
    if row is None:
        return None
    value = row.value
    try:
        return json.loads(value) if isinstance(value, (str, bytes)) else value
    except ValueError:
        return value


class _XComUrlLink(BaseOperatorLink):
    xcom_url_key = ""

    def get_link(self, operator, *, ti_key) -> str:
        try:
            url = read_xcom(ti_key, self.xcom_url_key)
        except Exception:  # noqa: BLE001 - one broken link must not break the task's whole links panel
            log.exception("reading %s of %s", self.xcom_url_key, ti_key)
            return ""
        return url if isinstance(url, str) else ""


class MlflowRunLink(_XComUrlLink):
    name = "MLflow run"
    xcom_url_key = MLFLOW_RUN_URL


class MlflowExperimentLink(_XComUrlLink):
    name = "MLflow experiment"
    xcom_url_key = MLFLOW_EXPERIMENT_URL


def _mlflow_ui_url() -> str:
    from tasks.settings import Settings

    return Settings.from_env().mlflow_ui_url


class TfpipePlugin(AirflowPlugin):
    name = "tfpipe"
    global_operator_extra_links = [MlflowRunLink(), MlflowExperimentLink()]
    external_views = [{"name": "MLflow", "href": _mlflow_ui_url(), "destination": "nav", "category": "browse"}]
    listeners = [tfpipe_listener]
