"""Experiment tracking: the only module that imports ``mlflow``.

One MLflow *parent* run per pipeline run (one DAG run, or one ``tfpipe run``) in the
experiment named after the pipeline, and one *child* run per step. The step functions
themselves know nothing of tracking: ``tasks.pipeline`` wraps each in a child run and
records what it returned through an :class:`MlflowTracker`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` to ``{"a.b": 1}``; lists become their JSON text."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


class MlflowTracker:
    """What a step records, written into its MLflow child run through ``MlflowClient``."""

    def __init__(self, client: Any, run_id: str, parent_run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.parent_run_id = parent_run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in _finite(metrics).items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_metric_history(self, name: str, values: list[float]) -> None:
        """A whole curve in batched calls, one point per step (not one request per step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, i) for i, v in enumerate(values) if math.isfinite(float(v))]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        local_path = Path(local_path)
        if local_path.is_dir():
            target = f"{artifact_path}/{local_path.name}" if artifact_path else local_path.name
            self.client.log_artifacts(self.run_id, str(local_path), target)
        else:
            self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def register_model(self, name: str, source: str, tags: Mapping[str, str]) -> str:
        """Register ``source`` as a new version of ``name`` and make it the champion.

        The previous champion keeps a tag recording when it was replaced, so the history of
        what served in production stays readable in the registry.
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = self.client.create_model_version(
            name, source, run_id=self.run_id, tags={k: str(v) for k, v in tags.items()}
        )
        try:
            previous = self.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException:
            previous = None
        if previous is not None and previous.version != version.version:
            self.client.set_model_version_tag(
                name, previous.version, "replaced_as_champion_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            )
            self.client.set_model_version_tag(name, previous.version, "replaced_by_version", version.version)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
        return str(version.version)


@dataclass(frozen=True)
class RunIdentity:
    """Who is running: the pipeline run (DAG run) and, for a step, its task and try."""

    pipeline: str
    run_id: str
    dag_id: str
    orchestrator: str = "airflow"


class MlflowTracking:
    """Finds or creates the parent run of a pipeline run and opens child runs for steps."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except MlflowException:  # created meanwhile by a concurrent step
            return self.client.get_experiment_by_name(name).experiment_id

    def parent_run_id(self, identity: RunIdentity, params: Mapping[str, Any] | None = None) -> str:
        experiment_id = self.experiment_id(identity.pipeline)
        found = self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{PARENT_ROLE}' and tags.`{TAG_RUN_KEY}` = '{identity.run_id}'",
            max_results=1,
        )
        if found:
            return found[0].info.run_id
        run = self.client.create_run(
            experiment_id,
            run_name=identity.run_id,
            tags={
                TAG_ROLE: PARENT_ROLE,
                TAG_PIPELINE: identity.pipeline,
                TAG_RUN_KEY: identity.run_id,
                TAG_DAG_ID: identity.dag_id,
                TAG_DAG_RUN_ID: identity.run_id,
                "tfpipe.orchestrator": identity.orchestrator,
            },
        )
        if params:
            MlflowTracker(self.client, run.info.run_id).log_params(params)
        return run.info.run_id

    def set_parent_status(self, parent_id: str, status: str) -> None:
        """``RUNNING`` again on a retry; ``FINISHED`` or ``FAILED`` when the pipeline run ends."""
        if status == "RUNNING":
            self.client.update_run(parent_id, status="RUNNING")
        else:
            self.client.set_terminated(parent_id, status=status)

    @contextmanager
    def step_run(self, identity: RunIdentity, step: str, try_number: int,
                 params: Mapping[str, Any] | None = None) -> Iterator[MlflowTracker]:
        """A child run for one try of one step, ended FINISHED or FAILED with it."""
        parent_id = self.parent_run_id(identity, params)
        self.set_parent_status(parent_id, "RUNNING")
        run = self.client.create_run(
            self.experiment_id(identity.pipeline),
            run_name=step,
            tags={
                "mlflow.parentRunId": parent_id,
                TAG_ROLE: STEP_ROLE,
                TAG_PIPELINE: identity.pipeline,
                TAG_RUN_KEY: identity.run_id,
                TAG_DAG_ID: identity.dag_id,
                TAG_DAG_RUN_ID: identity.run_id,
                TAG_TASK_ID: step,
                TAG_TRY: str(try_number),
            },
        )
        tracker = MlflowTracker(self.client, run.info.run_id, parent_id)
        try:
            yield tracker
        except BaseException:
            self.client.set_terminated(run.info.run_id, status="FAILED")
            self.set_parent_status(parent_id, "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, status="FINISHED")


    def pipeline_summary(self, pipeline: str, run_id: str | None = None) -> dict[str, Any] | None:
        """What a pipeline run did, read back from its MLflow runs (the latest run by default)."""
        experiment = self.client.get_experiment_by_name(pipeline)
        if experiment is None:
            return None
        query = f"tags.`{TAG_ROLE}` = '{PARENT_ROLE}'"
        if run_id:
            query += f" and tags.`{TAG_RUN_KEY}` = '{run_id}'"
        parents = self.client.search_runs([experiment.experiment_id], query,
                                          order_by=["attributes.start_time DESC"], max_results=1)
        if not parents:
            return None
        parent = parents[0]
        children = self.client.search_runs(
            [experiment.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
        )
        durations: dict[str, float] = {}
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for child in children:
                step = child.data.tags.get(TAG_TASK_ID, child.info.run_name)
                durations[step] = (child.info.end_time - child.info.start_time) / 1000
                for wanted, artifact in (("evaluate_model", "evaluation/blessing.json"),
                                         ("optimize_model", "optimization/report.json")):
                    if step == wanted:
                        path = self.client.download_artifacts(child.info.run_id, artifact, tmp)
                        data = json.loads(Path(path).read_text())
                        results[step] = data if step == "evaluate_model" else {"report": data}
                if step == "push_model":
                    results[step] = {
                        "uri": child.data.params.get("pushed_uri"),
                        "version": child.data.params.get("pushed_version"),
                        "registry_version": child.data.tags.get("tfpipe.registry_version"),
                    }
        return {
            "run_id": parent.data.tags.get(TAG_RUN_KEY),
            "parent_run_id": parent.info.run_id,
            "status": parent.info.status,
            "durations": durations,
            "results": results,
        }

