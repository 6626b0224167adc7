"""The names tfpipe gives its MLflow records (roles, tags, the registry alias) and the links into
the MLflow UI."""

from __future__ import annotations

from urllib.parse import quote

PARENT_ROLE = "pipeline"
STEP_ROLE = "step"
CHAMPION_ALIAS = "champion"

TAG_ROLE = "tfpipe.role"
TAG_PIPELINE = "tfpipe.pipeline"
TAG_RUN_KEY = "tfpipe.run_id"
TAG_DAG_ID = "airflow.dag_id"
TAG_DAG_RUN_ID = "airflow.run_id"
TAG_TASK_ID = "airflow.task_id"
TAG_TRY = "airflow.try_number"
TAG_WAITING = "tfpipe.waiting"  # a step run left open while its work runs elsewhere (a deferred task)
TAG_DAG_RUN_URL = "airflow.dag_run_url"
TAG_TASK_URL = "airflow.task_instance_url"
TAG_DAG_RUN_STATE = "airflow.dag_run_state"
# The headline of a pipeline run, on its parent run.
TAG_BLESSED = "tfpipe.blessed"
TAG_BASELINE = "tfpipe.baseline"
TAG_PUSHED_VERSION = "tfpipe.pushed_version"
TAG_PUSHED_URI = "tfpipe.pushed_uri"
TAG_REGISTRY_VERSION = "tfpipe.registry_version"
TAG_REGISTRY_URL = "tfpipe.registry_url"
NOTE = "mlflow.note.content"  # the run's description in the MLflow UI (markdown)
# The experiment kind of a training pipeline (MLflow 3). MLflow 3.17's UI reads its own
# "GenAI | Model training" switch before this tag, so links also ask for the view (below).
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


# The loggers MLflow gives a handler of its own (on stderr) when it is imported.
MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey")


# The loggers MLflow gives a handler of its own (on stderr) when it is imported.
MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey")



# MLflow 3.17's UI opens every experiment on its GenAI pages (traces, token usage) unless the
# URL asks for model training: its "GenAI | Model training" switch is a browser-wide setting
# that starts on GenAI and overrides the experiment's kind tag. Every link tfpipe gives asks.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"



def run_url(mlflow_ui_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run, in the UI's model-training view."""
    return f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"



def experiment_url(mlflow_ui_url: str, experiment_id: str) -> str:
    """The runs table of an experiment, in the UI's model-training view."""
    return f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"



def model_version_url(mlflow_ui_url: str, name: str, version: str | int) -> str:
    """The MLflow UI page of a registered model's version."""
    return f"{mlflow_ui_url.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"


def artifact_url(mlflow_ui_url: str, experiment_id: str, run_id: str, path: str) -> str:
    """The MLflow UI page of one artifact of a run (the artifacts tab, the file open)."""
    return (f"{mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/"
            f"{quote(path, safe='/')}?{MODEL_TRAINING_VIEW}")
