"""One run of a pipeline as every step sees it: the config after the trigger form and ``--set``
overrides, where state lives (:class:`tasks.settings.Settings`), its MLflow child run per step,
and its scratch folders."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks import __version__, artifacts, heap
from tasks.config import PipelineConfig, load_pipeline, resolve_pipeline_path
from tasks.settings import Settings
from tasks.steps import step_named
from tasks.tracking import MlflowTracker, MlflowTracking, RunIdentity, experiment_url, run_url
from tasks.trigger import overrides_from_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """One pipeline run: the config after overrides, where state lives, and who runs it."""

    pipeline: str
    config: PipelineConfig
    settings: Settings
    run_id: str
    dag_id: str
    ds: str | None = None
    try_number: int = 1
    orchestrator: str = "cli"
    overrides: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # the trigger form's values (a DAG run's conf)
    # Told where each step's MLflow run is ({"run_id", "experiment_id", "run_url", "experiment_url"}),
    # as soon as it exists: the DAG pushes it to XCom for the Airflow UI's links.
    on_run: Callable[[dict[str, str]], None] | None = None
    # How train.runner kubernetes reaches the cluster: a connection id to a
    # tasks.training.kubernetes_runner.Cluster (the DAG's: Airflow's hook); None: the kubeconfig.
    kubernetes: Callable[[str], Any] | None = None

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.config.name, self.run_id, self.dag_id, self.orchestrator, self.settings.airflow_url)

    def output(self, name: str) -> str:
        return artifacts.output_uri(self.settings.artifact_root, self.config.name, self.run_id, name)

    def work_dir(self, step: str) -> Path:
        return self.settings.home / "work" / self.config.name / artifacts.safe_run_id(self.run_id) / step


def curated_schema_path(ctx: RunContext) -> Path:
    """Where a pipeline's curated schema lives: ``validation.schema_file`` or ``<name>.schema.pbtxt``."""
    base = Path(ctx.pipeline).parent
    return base / (ctx.config.validation.schema_file or f"{Path(ctx.pipeline).stem}.schema.pbtxt")


def make_context(
    pipeline: str | Path,
    run_id: str,
    settings: Settings,
    overrides: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    ds: str | None = None,
    dag_id: str | None = None,
    try_number: int = 1,
    orchestrator: str = "cli",
    on_run: Callable[[dict[str, str]], None] | None = None,
) -> RunContext:
    """Load the pipeline with ``params`` (trigger form) then ``overrides`` (``--set``) applied."""
    base = load_pipeline(pipeline, pipelines_dir=settings.pipelines_dir)
    merged = {**overrides_from_params(base, params), **(overrides or {})}
    config = load_pipeline(pipeline, merged, settings.pipelines_dir) if merged else base
    return RunContext(
        pipeline=str(resolve_pipeline_path(pipeline, settings.pipelines_dir)),
        config=config,
        settings=settings,
        run_id=run_id,
        dag_id=dag_id or config.name,
        ds=ds,
        try_number=try_number,
        orchestrator=orchestrator,
        overrides=merged,
        params=dict(params or {}),
        on_run=on_run,
    )


@lru_cache(maxsize=4)
def _tracking(tracking_uri: str, artifact_location: str | None) -> MlflowTracking:
    return MlflowTracking(tracking_uri, artifact_location)


def tracking_for(settings: Settings) -> MlflowTracking:
    """The tracking of ``settings``; the embedded SQLite store's folder is created first."""
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.tracking_uri.startswith("sqlite:"):
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        _new_store_while_loading(settings.tracking_uri)
    heap.load("mlflow")
    return _tracking(settings.tracking_uri, settings.mlflow_artifact_location)


def _new_store_while_loading(tracking_uri: str) -> None:
    """A new embedded store, in a process that has not loaded TensorFlow yet (the first step of a
    first run, in ``tfpipe run`` or an Airflow task): a second process makes the store
    (:mod:`tasks.tracking.store`) while this one loads TensorFlow and TFDV, which the later steps
    use. Each takes a core instead of running one after the other (docs/benchmarks.md). Anywhere
    else MLflow makes the store at the first connection, as it always does."""
    from tasks.tracking.store import start_new_store

    if "tensorflow" in sys.modules:
        return
    pending = start_new_store(tracking_uri)  # None: not a new SQLite store
    if pending is None:
        return
    try:
        heap.load("tensorflow_data_validation")  # loaded now, while the store is made
    finally:
        pending.wait()


@lru_cache(maxsize=1)
def code_version() -> str:
    """The tfpipe version and, in a git checkout, the commit."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__


@contextmanager
def step_run(ctx: RunContext, name: str) -> Iterator[MlflowTracker]:
    tracking = tracking_for(ctx.settings)
    params = {"config": ctx.config.model_dump(mode="json"), "overrides": json.dumps(ctx.overrides),
              "code_version": code_version()}
    started = time.perf_counter()
    may_wait = name == "train_model" and ctx.config.train.runner == "kubernetes"  # the task defers meanwhile
    with tracking.step_run(ctx.identity, name, ctx.try_number, params=params, may_wait=may_wait) as tracker:
        if ctx.on_run is not None:
            experiment_id = tracking.experiment_id(ctx.config.name)
            ctx.on_run({"run_id": tracker.run_id, "experiment_id": experiment_id,
                        "run_url": run_url(ctx.settings.mlflow_ui_url, experiment_id, tracker.run_id),
                        "experiment_url": experiment_url(ctx.settings.mlflow_ui_url, experiment_id)})
        # The step's run is open (a DAG run that ends now finds it), then its libraries load.
        step = step_named(name)
        heap.load(*(step.loads if step else ()))
        if step and "tensorflow" in step.loads:  # the graphs it runs, served ones too, optimized as configured
            from tasks.training.distribution import apply_graph_options

            apply_graph_options(ctx.config.train.graph_options.tf_options())
        yield tracker
        tracker.log_metrics({"step_seconds": time.perf_counter() - started})


def end_pipeline(ctx: RunContext, tracker: MlflowTracker, outcome: str) -> None:
    """Mark the parent run FINISHED: this step is the last one the run executes."""
    tracking = tracking_for(ctx.settings)
    tracking.client.set_tag(tracker.parent_run_id, "tfpipe.outcome", outcome)
    tracking.set_parent_status(tracker.parent_run_id, "FINISHED")


@contextmanager
def scratch_dir(ctx: RunContext, step: str) -> Iterator[Path]:
    import tempfile

    base = ctx.work_dir(step)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base, prefix="log-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def data_version(examples_uri: str) -> str:
    """The digests of the sources the model was trained on, from the examples manifest."""
    from tasks.artifacts import Examples

    return ",".join(source["sha256"][:16] for source in Examples.open(examples_uri).sources)
