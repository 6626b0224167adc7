"""
### rollback_model

Moves a model's **champion** (the version TensorFlow Serving serves) back to an earlier version
in the model store: by default the previous champion, or the version you name.

1. The store's champion pointer (`<store>/<model>/champion.json`) and TensorFlow Serving's
   `<store>/models.config` are rewritten; a server polling that file switches versions, loading
   the new one before unloading the old.
2. With `TFPIPE_SERVING_URL` set, the task waits until TensorFlow Serving reports the version
   AVAILABLE and answers its warm-up requests as before.
3. The MLflow Model Registry alias `champion` follows; the version it leaves is tagged
   `rolled_back_as_champion_at` / `rolled_back_by_version`, and the rollback is an MLflow run
   (tag `tfpipe.role=rollback`) in the pipeline's experiment.

4. The rollback is an event in the model's audit trail: who triggered it, from which version to
   which, and the reason given (`tfpipe history <model>`, and a registry version tag `audit.*`).

The same from a shell: `tfpipe rollback <model> [--to VERSION] [--reason TEXT]`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from dags.airflow_support import DEFAULT_ARGS, export_aws_connection, model_names, tfpipe_step


MODELS = model_names()


@dag(
    dag_id="rollback_model",
    description="Move a model's champion back to an earlier version and update serving",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    # Unpaused from the start: a rollback is wanted in a hurry, and a paused DAG's runs only queue.
    is_paused_upon_creation=False,
    default_args={**DEFAULT_ARGS, "retries": 1},
    params={
        "model": Param(MODELS[0] if MODELS else "", type="string", **({"enum": MODELS} if MODELS else {}),
                       description="The model (folder in the model store, registered model in MLflow)."),
        "to_version": Param(None, type=["null", "integer"], minimum=1,
                            description="Store version to serve. Empty: the previous champion."),
        "reason": Param("", type="string", maxLength=500,
                        description="Why: recorded in the audit trail (tfpipe history MODEL) and the registry."),
    },
    tags=["tfpipe", "release"],
)
def rollback_model():
    @task(execution_timeout=timedelta(minutes=30))
    @tfpipe_step
    def rollback_model(params=None, run_id=None, ti=None, dag_run=None):
        from tasks.release_steps import rollback_model as rollback
        from tasks.settings import Settings

        export_aws_connection()
        # The DAG run is the operation: a retry finishes this rollback instead of stepping back again.
        user = getattr(dag_run, "triggering_user_name", None)
        return rollback(Settings.from_env(), params["model"], params.get("to_version"),
                        by=f"airflow:{ti.dag_id}/{run_id}" + (f" by {user}" if user else ""),
                        operation=f"{ti.dag_id}/{run_id}",
                        reason=params.get("reason") or "rollback from the Airflow UI")

    rollback_model()


rollback_model()
