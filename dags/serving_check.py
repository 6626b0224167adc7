"""
### serving_check

Checks what serves each model, after every push: `push_model` updates the model's Airflow
Asset (`tfpipe://models/<model>`), and this DAG is scheduled on those assets, so it runs after
each push without a schedule of its own. Triggered by hand, it checks every model.

For each model it checks:

1. The store's champion, and `<store>/models.config` naming exactly that version.
2. Every file of the version against its manifest (size and SHA-256), downloaded from S3
   when the store is there.
3. The version loads and answers its warm-up requests with finite scores (class scores
   summing to 1).
4. With `TFPIPE_SERVING_URL` set, TensorFlow Serving reports the version AVAILABLE and
   answers the same over REST.

Each check is an MLflow run (tag `tfpipe.role=serving_check`) in the pipeline's experiment.
A failed check fails the task, with what was wrong.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import AssetAny, dag, task

from dags.airflow_support import DEFAULT_ARGS, export_aws_connection, model_asset, model_names, tfpipe_step

MODELS = model_names()
ASSETS = [model_asset(name) for name in MODELS]


@dag(
    dag_id="serving_check",
    description="After every push: the champion is in models.config, intact, answering, and served",
    doc_md=__doc__,
    schedule=AssetAny(*ASSETS) if ASSETS else None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Never paused: Airflow queues no run of a paused DAG for an asset event, so a push made while
    # it is paused would never be checked.
    is_paused_upon_creation=False,
    default_args=DEFAULT_ARGS,
    tags=["tfpipe", "release"],
)
def serving_check():
    @task(execution_timeout=timedelta(minutes=30))
    @tfpipe_step
    def check_serving(run_id=None, triggering_asset_events=None):
        from tasks.release_steps import check_serving as check
        from tasks.settings import Settings

        export_aws_connection()
        pushed = {}
        for events in (triggering_asset_events or {}).values():
            for event in events:
                extra = dict(event.extra or {})
                if "model_name" in extra:
                    pushed[extra["model_name"]] = extra  # the latest push of each model
        names = sorted(pushed) or MODELS
        return {name: check(Settings.from_env(), name, pushed=pushed.get(name), by=f"airflow:serving_check/{run_id}")
                for name in names}

    check_serving()


serving_check()
