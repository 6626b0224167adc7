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


# The hooks run inside the scheduler's loop: an MLflow server that is down or hung (its client
# retries for minutes) must not stall scheduling. The update runs on a thread of its own, and
# the hook waits for it at most this long.
WAIT_SECONDS = 5.0


# An MLflow server that is down when the DAG run ends is tried again, each wait twice the last (at
# most a minute), for this long: once it is back, no run of the DAG run stays RUNNING.
RETRY_SECONDS = 1800.0


def _update(dag_id: str, run_id: str, state: str) -> None:
    import time

    deadline, wait = time.monotonic() + RETRY_SECONDS, 1.0
    while True:
        try:
            from tasks.release_steps import end_dag_run
            from tasks.settings import Settings

            status = end_dag_run(Settings.from_env(), dag_id, run_id, state)
            if status is not None:
                log.info("MLflow run of %s %s: %s", dag_id, run_id, status)
            return
        except Exception as error:  # noqa: BLE001 - tracking trouble must never break the scheduler
            if time.monotonic() + wait > deadline:
                log.warning("gave up ending the MLflow run of %s %s", dag_id, run_id, exc_info=True)
                return
            log.warning("could not end the MLflow run of %s %s (%s); trying again in %.0f s", dag_id, run_id,
                        type(error).__name__, wait)
            time.sleep(wait)
            wait = min(wait * 2, 60.0)


def _end(dag_run, state: str) -> None:
    import threading

    worker = threading.Thread(target=_update, args=(dag_run.dag_id, dag_run.run_id, state), daemon=True,
                              name=f"tfpipe-end-{dag_run.run_id}")
    worker.start()
    worker.join(WAIT_SECONDS)
    if worker.is_alive():
        log.warning("MLflow is slow to answer: the run of %s %s is ended in the background", dag_run.dag_id,
                    dag_run.run_id)


@hookimpl
def on_dag_run_success(dag_run, msg):
    _end(dag_run, "success")


@hookimpl
def on_dag_run_failed(dag_run, msg):
    _end(dag_run, "failed")
