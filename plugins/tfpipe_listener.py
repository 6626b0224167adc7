"""Ends the MLflow parent run of a pipeline's DAG run with the DAG run's state.

A step ends its own MLflow run, and the last step ends the parent run; but a task that is
killed (timeout, a run marked failed in the UI, a lost worker) never gets to. When the DAG run
ends, this listener records its state on the parent run (tag ``airflow.dag_run_state``) and
ends a parent run still RUNNING: FINISHED on success, FAILED otherwise; a step run still
RUNNING becomes KILLED. DAG-run hooks fire in the scheduler, or in the API server when a user
sets the state.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)


def _end(dag_run, state: str) -> None:
    try:
        from tasks.pipeline import end_dag_run
        from tasks.settings import Settings

        status = end_dag_run(Settings.from_env(), dag_run.dag_id, dag_run.run_id, state)
        if status is not None:
            log.info("MLflow run of %s %s: %s", dag_run.dag_id, dag_run.run_id, status)
    except Exception:  # noqa: BLE001 - tracking trouble must never break the scheduler
        log.exception("could not end the MLflow run of %s %s", dag_run.dag_id, dag_run.run_id)


@hookimpl
def on_dag_run_success(dag_run, msg):
    _end(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run, msg):
    _end(dag_run, "failed")
