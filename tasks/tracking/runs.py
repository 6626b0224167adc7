"""A pipeline run in MLflow: its parent run (:class:`MlflowTracking`) and what each step records
into its child run (:class:`MlflowTracker`)."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tasks.errors import StepWaiting
from tasks.tracking.models import saved_model_pyfunc
from tasks.tracking.names import (EXPERIMENT_KIND, MLFLOW_LOGGERS, MODEL_TRAINING, NOTE, PARENT_ROLE, STEP_ROLE,
                                  TAG_BASELINE, TAG_BLESSED, TAG_DAG_ID, TAG_DAG_RUN_ID, TAG_DAG_RUN_STATE,
                                  TAG_DAG_RUN_URL, TAG_PIPELINE, TAG_PUSHED_URI, TAG_PUSHED_VERSION, TAG_REGISTRY_URL,
                                  TAG_REGISTRY_VERSION, TAG_ROLE, TAG_RUN_KEY, TAG_TASK_ID, TAG_TASK_URL, TAG_TRY,
                                  TAG_WAITING, model_version_url)
from tasks.tracking.registry import move_champion_alias, registry_version_for


def log_through_root_logger() -> None:
    """Send MLflow's log records to the root logger's handlers, at their own level, instead of
    the handler on stderr that MLflow installs when imported.

    For hosts that log records themselves: an Airflow task shows every stderr line as an error.
    MLflow's levels stay as it set them (``mlflow`` INFO, its database libraries WARNING).
    """
    import mlflow  # noqa: F401 - the first import configures MLflow's loggers

    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True



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



def _numbers(values: Any) -> dict[str, float]:
    """The numeric entries of ``values`` when it is a mapping (anything else: none)."""
    if not isinstance(values, Mapping):
        return {}
    return {str(k): v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}



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

    def log_dataset(self, manifest: Mapping[str, Any], name: str, context: str, on_parent: bool = False) -> None:
        """The examples this run reads, as an MLflow dataset input (and the parent run's too)."""
        from tasks.tracking.datasets import dataset_input

        entry = dataset_input(manifest, name, context)
        for run_id in (self.run_id, *([self.parent_run_id] if on_parent and self.parent_run_id else [])):
            self.client.log_inputs(run_id, datasets=[entry])

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_saved_model(self, saved_model_dir: Path, feature_kinds: Mapping[str, str], input_example: Any,
                        name: str = "model", requirements: list[str] | None = None,
                        params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> str:
        """The SavedModel as an MLflow 3 logged model (a pyfunc with its signature and an input
        example), output of this run; returns its model ID.

        ``mlflow.pyfunc.load_model(f"models:/{model_id}").predict(frame)`` takes a DataFrame of raw
        feature columns (``feature_kinds``: int, float or string; missing values allowed) and
        returns the ``serving_default`` outputs. The signature is inferred from ``input_example``
        (a DataFrame) and the model's own predictions for it. A model whose upload fails is
        marked FAILED.
        """
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelStatus
        from mlflow.models import infer_signature

        model = saved_model_pyfunc(dict(feature_kinds))
        model.load_context(mlflow.pyfunc.PythonModelContext({"saved_model": str(saved_model_dir)}, None))
        signature = infer_signature(input_example, model.predict(None, input_example))
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        logged = self.client.create_logged_model(
            experiment_id, name=name, source_run_id=self.run_id, model_type="tensorflow-savedmodel",
            params={k: str(v)[:6000] for k, v in (params or {}).items()}, tags={k: str(v) for k, v in (tags or {}).items()})
        try:
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / name
                mlflow.pyfunc.save_model(
                    str(target), python_model=saved_model_pyfunc(dict(feature_kinds)),
                    artifacts={"saved_model": str(saved_model_dir)}, signature=signature,
                    input_example=input_example, pip_requirements=requirements,
                )
                self.client.log_model_artifacts(logged.model_id, str(target))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        self.log_model_output(logged.model_id)
        return logged.model_id

    def log_model_files(self, model_id: str | None, paths: list[Path], artifact_path: str) -> None:
        """Files or folders (an optimized variant) as artifacts of the logged model ``model_id``, under
        ``artifact_path``: its page in the MLflow UI lists them with it."""
        if not model_id or not paths:
            return
        import shutil

        with tempfile.TemporaryDirectory() as tmp:
            for path in paths:
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, Path(tmp) / path.name)
            self.client.log_model_artifacts(model_id, tmp, artifact_path)

    def log_model_output(self, model_id: str) -> None:
        """This run made (or, reused, stands for) the logged model ``model_id``."""
        from mlflow.entities import LoggedModelOutput

        self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=0)])

    def log_model_input(self, model_id: str | None) -> None:
        """This run reads the logged model ``model_id`` (the MLflow UI's Models column and lineage)."""
        from mlflow.entities import LoggedModelInput

        if model_id:
            self.client.log_inputs(self.run_id, models=[LoggedModelInput(model_id)])

    def log_model_metrics(self, model_id: str | None, metrics: Mapping[str, float],
                          dataset: Mapping[str, str] | None = None) -> None:
        """Metrics of the logged model ``model_id``, logged on this run and linked to the model (and to
        the dataset they were measured on: ``{"name", "digest"}``): its page in the MLflow UI lists them."""
        from mlflow.entities import Metric

        if not model_id:
            self.log_metrics(metrics)
            return
        now = int(time.time() * 1000)
        named = dict(dataset or {})
        items = [Metric(k, v, now, 0, model_id=model_id, dataset_name=named.get("name"),
                        dataset_digest=named.get("digest")) for k, v in _finite(metrics).items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_headline(self, blessing: Mapping[str, Any] | None = None, pushed: Mapping[str, Any] | None = None,
                     mlflow_ui_url: str | None = None) -> None:
        """What the pipeline run came to, on its parent run: what the MLflow UI shows first.

        Args:
            blessing: The evaluation's record: its ``metrics`` become the parent's metrics, the
                trivial baseline's (``trivial.metrics``, when present) ``baseline_<metric>``, and
                ``blessed`` the tag ``tfpipe.blessed``.
            pushed: The push's record (``model_name``, ``version``, ``uri``, ``registry_version``,
                ``champion``): tags, and a line in the run's description linking to the
                registry page.
            mlflow_ui_url: The MLflow UI, for that link.
        """
        if self.parent_run_id is None:
            return
        parent = MlflowTracker(self.client, self.parent_run_id)
        if blessing is not None:
            parent._log_blessing(blessing)
        if pushed is not None:
            parent._log_pushed(pushed, mlflow_ui_url)

    def _log_blessing(self, blessing: Mapping[str, Any]) -> None:
        trivial = blessing.get("trivial") if isinstance(blessing.get("trivial"), Mapping) else {}
        self.log_metrics(_numbers(blessing.get("metrics")))
        self.log_metrics({f"baseline_{k}": v for k, v in _numbers(trivial.get("metrics")).items()})
        tags = {TAG_BLESSED: str(bool(blessing.get("blessed"))).lower()}
        if trivial.get("description"):
            tags[TAG_BASELINE] = str(trivial["description"])[:5000]
        self.set_tags(tags)

    def _log_pushed(self, pushed: Mapping[str, Any], mlflow_ui_url: str | None) -> None:
        name, version, registry = pushed["model_name"], pushed["version"], pushed.get("registry_version")
        tags = {TAG_PUSHED_VERSION: str(version), TAG_PUSHED_URI: str(pushed.get("uri", ""))}
        line = f"Pushed **{name}** v{version} to `{pushed.get('uri', '')}`"
        if registry:
            tags[TAG_REGISTRY_VERSION] = str(registry)
            link = f"registry version {registry}"
            if mlflow_ui_url:
                tags[TAG_REGISTRY_URL] = model_version_url(mlflow_ui_url, name, registry)
                link = f"[{link}]({tags[TAG_REGISTRY_URL]})"
            line += f", {link}"
        if pushed.get("champion") is not None:
            line += f"; champion: v{pushed['champion']}"
        note = self.client.get_run(self.run_id).data.tags.get(NOTE, "")
        if line not in note:  # a retried push states it once
            tags[NOTE] = f"{note}\n\n{line}" if note else line
        self.set_tags(tags)

    def register_model(self, name: str, source: str, tags: Mapping[str, str], champion: bool = True,
                       source_run_id: str | None = None, model_id: str | None = None) -> str:
        """Register ``source`` as a new version of ``name``; with ``champion``, move the alias to it.

        ``source_run_id``: the run that logged ``source``; default this run. ``model_id``: the
        logged model it is (``models:/<id>``), which then lists the version (tag
        ``mlflow.modelVersions``, as MLflow's own ``register_model`` does).

        The previous champion keeps tags recording when and by which version it was replaced,
        so the history of what served in production stays readable in the registry.
        """
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with _global_tracking_uri(self.client.tracking_uri):  # the registry resolves models:/<id> through it
            version = self.client.create_model_version(
                name, source, run_id=source_run_id or self.run_id, tags={k: str(v) for k, v in tags.items()},
                model_id=model_id,
            )
        if model_id:
            from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

            listed = json.loads(self.client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
            listed.append({"name": name, "version": version.version})  # as MLflow's own register_model lists it
            self.client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
        if champion:
            move_champion_alias(self.client, name, str(version.version), "replaced")
        return str(version.version)



@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for a while: an embedded registry store
    looks a logged model up through it, not through the client that asked. Its environment
    variable, which MLflow sets with it for subprocesses, is put back as it was."""
    import os

    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@dataclass(frozen=True)
class RunIdentity:
    """Who is running: the pipeline run (DAG run) and, for a step, its task and try.

    ``airflow_url`` (Airflow's UI) adds links from the MLflow runs back to the DAG run and the
    task instance.
    """

    pipeline: str
    run_id: str
    dag_id: str
    orchestrator: str = "airflow"
    airflow_url: str | None = None

    def dag_run_url(self) -> str | None:
        if not self.airflow_url:
            return None
        return f"{self.airflow_url}/dags/{quote(self.dag_id, safe='')}/runs/{quote(self.run_id, safe='')}"

    def task_url(self, task_id: str) -> str | None:
        base = self.dag_run_url()
        return f"{base}/tasks/{quote(task_id, safe='')}" if base else None



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
            if EXPERIMENT_KIND not in experiment.tags:
                self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return experiment.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location,
                                                 tags={EXPERIMENT_KIND: MODEL_TRAINING})
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
        tags = {
            TAG_ROLE: PARENT_ROLE,
            TAG_PIPELINE: identity.pipeline,
            TAG_RUN_KEY: identity.run_id,
            TAG_DAG_ID: identity.dag_id,
            TAG_DAG_RUN_ID: identity.run_id,
            "tfpipe.orchestrator": identity.orchestrator,
        }
        if identity.dag_run_url():
            tags[TAG_DAG_RUN_URL] = identity.dag_run_url()
            tags[NOTE] = f"Airflow DAG run: [{identity.dag_id} / {identity.run_id}]({identity.dag_run_url()})"
        run = self.client.create_run(experiment_id, run_name=identity.run_id, tags=tags)
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
                 params: Mapping[str, Any] | None = None, may_wait: bool = False) -> Iterator[MlflowTracker]:
        """A child run for one try of one step, ended FINISHED or FAILED with it.

        A step that ``may_wait`` for work elsewhere (:class:`~tasks.errors.StepWaiting`) leaves
        its run open, and running that try again goes on in the same run."""
        parent_id = self.parent_run_id(identity, params)
        self.set_parent_status(parent_id, "RUNNING")
        tags = {
            "mlflow.parentRunId": parent_id,
            TAG_ROLE: STEP_ROLE,
            TAG_PIPELINE: identity.pipeline,
            TAG_RUN_KEY: identity.run_id,
            TAG_DAG_ID: identity.dag_id,
            TAG_DAG_RUN_ID: identity.run_id,
            TAG_TASK_ID: step,
            TAG_TRY: str(try_number),
        }
        if identity.task_url(step):
            tags[TAG_TASK_URL] = identity.task_url(step)
            tags[TAG_DAG_RUN_URL] = identity.dag_run_url()
            tags[NOTE] = (f"Airflow task instance: [{identity.dag_id} / {step} (try {try_number})]"
                          f"({identity.task_url(step)}) of DAG run [{identity.run_id}]({identity.dag_run_url()})")
        run_id = self._waiting_step_run(identity, parent_id, step, try_number) if may_wait else None
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id(identity.pipeline), run_name=step, tags=tags).info.run_id
        tracker = MlflowTracker(self.client, run_id, parent_id)
        try:
            yield tracker
        except StepWaiting:
            self.client.set_tag(run_id, TAG_WAITING, "true")  # open: the step goes on in this run
            raise
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            self.set_parent_status(parent_id, "FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def _waiting_step_run(self, identity: RunIdentity, parent_id: str, step: str, try_number: int) -> str | None:
        """The open run of this try of ``step`` if it waited for work elsewhere (a deferred task), else None."""
        runs = self.client.search_runs(
            [self.experiment_id(identity.pipeline)],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{TAG_WAITING}` = 'true'",
        )
        for run in runs:
            tags = run.data.tags
            if (tags.get(TAG_TASK_ID), tags.get(TAG_TRY), run.info.status) == (step, str(try_number), "RUNNING"):
                self.client.set_tag(run.info.run_id, TAG_WAITING, "false")
                return run.info.run_id
        return None


    def record_operation(self, experiment: str, run_name: str, role: str, params: Mapping[str, Any],
                         details: Mapping[str, Any], tags: Mapping[str, str] | None = None,
                         status: str = "FINISHED") -> str:
        """An operation on the model store (a rollback, a serving check) as a run of ``experiment``
        tagged ``tfpipe.role=<role>``, with its details as ``<role>.json``; returns the run id."""
        run = self.client.create_run(self.experiment_id(experiment), run_name=run_name,
                                     tags={TAG_ROLE: role, TAG_PIPELINE: experiment, **(tags or {})})
        tracker = MlflowTracker(self.client, run.info.run_id)
        tracker.log_params(params)
        tracker.log_dict(dict(details), f"{role}.json")
        self.client.set_terminated(run.info.run_id, status=status)
        return run.info.run_id

    def record_rollback(self, experiment: str, model_name: str, from_version: int | None, to_version: int,
                        by: str, details: Mapping[str, Any]) -> dict[str, Any]:
        """Move the registry alias ``champion`` to the version pushed as store version
        ``to_version`` and log the rollback as a run of ``experiment`` (tag ``tfpipe.role=rollback``)."""
        registry = registry_version_for(self.client, model_name, to_version)
        previous = move_champion_alias(self.client, model_name, registry, "rolled_back") if registry else None
        run_id = self.record_operation(
            experiment, f"rollback {model_name} v{from_version} to v{to_version}", "rollback",
            {"model_name": model_name, "from_store_version": from_version, "to_store_version": to_version,
             "to_registry_version": registry or "", "from_registry_version": previous or ""},
            details, {"tfpipe.model_name": model_name, "tfpipe.rolled_back_by": by})
        return {"run_id": run_id, "registry_version": registry, "previous_registry_version": previous}

    def end_pipeline_run(self, pipeline: str, run_id: str, dag_run_state: str) -> str | None:
        """The DAG run ended: record its state on the parent run, and end a parent run still
        RUNNING (a killed task never got to end it) as FINISHED or FAILED.

        Returns:
            The parent run's status afterwards, or None when the DAG run has no MLflow run.
        """
        experiment = self.client.get_experiment_by_name(pipeline)
        if experiment is None:
            return None
        found = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TAG_ROLE}` = '{PARENT_ROLE}' and tags.`{TAG_RUN_KEY}` = '{run_id}'",
            max_results=1,
        )
        if not found:
            return None
        parent = found[0]
        self.client.set_tag(parent.info.run_id, TAG_DAG_RUN_STATE, dag_run_state)
        for child in self.client.search_runs([experiment.experiment_id],
                                             f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                             "and attributes.status = 'RUNNING'"):
            self.client.set_terminated(child.info.run_id, status="KILLED")  # its task was killed, or lost MLflow
        if parent.info.status not in ("RUNNING", "SCHEDULED"):
            return parent.info.status
        status = "FINISHED" if dag_run_state == "success" else "FAILED"
        self.client.set_terminated(parent.info.run_id, status=status)
        return status

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
                        "champion": child.data.tags.get("tfpipe.champion"),
                    }
        return {
            "run_id": parent.data.tags.get(TAG_RUN_KEY),
            "parent_run_id": parent.info.run_id,
            "status": parent.info.status,
            "durations": durations,
            "results": results,
        }
