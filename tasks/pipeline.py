"""The pipeline's steps as called by Airflow and by ``tfpipe run``: each opens its MLflow child
run, calls the step function with explicit arguments, records what it produced, and returns a
small JSON-able record (URIs, counts, metrics) that moves through XCom.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks import __version__, artifacts, storage
from tasks.config import STRATEGIES, PipelineConfig, load_pipeline, resolve_pipeline_path
from tasks.errors import DataError
from tasks.settings import Settings, redact
from tasks.tracking import MlflowTracker, MlflowTracking, RunIdentity, experiment_url, run_url

log = logging.getLogger(__name__)

STEPS = (
    "ingest_examples",
    "validate_examples",
    "train_model",
    "evaluate_model",
    "optimize_model",
    "push_model",
)

# Trigger-form parameters: name -> dotted config key. Type, bounds and description come from the
# config model's field (tasks/config.py), so the form cannot disagree with the config.
_PARAMS: dict[str, str] = {"epochs": "train.epochs", "batch_size": "train.batch_size",
                           "learning_rate": "train.learning_rate", "strategy": "train.strategy",
                           "data_source": "data.source"}
_SOURCE_HELP = ("CSV/Parquet URI (path, s3://, package://) among those the pipeline allows (data.trigger_sources); "
                "{{ ds }} selects a partition.")
_UNIT_METRICS = {"accuracy", "auc", "precision", "recall"}


@dataclass(frozen=True)
class ParamSpec:
    """One field of the Airflow trigger form; the DAG turns it into an ``airflow.sdk.Param``."""

    name: str
    key: str
    default: Any
    type: str
    minimum: float | None
    maximum: float | None
    description: str
    choices: tuple[str, ...] = ()
    exclusive_minimum: bool = False  # the value must be greater than ``minimum``


def _field_schema(key: str) -> tuple[str, float | None, float | None, bool, str]:
    """JSON-schema type, bounds (and whether the lower one is exclusive) and description of a
    config field, read from the config model."""
    import annotated_types

    from tasks.config import PipelineConfig

    model: Any = PipelineConfig
    *parents, name = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    field = model.model_fields[name]
    low = high = None
    exclusive = False
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low, exclusive = rule.gt, True
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    kind = {int: "integer", float: "number"}.get(field.annotation, "string")
    return kind, low, high, exclusive, field.description or ""


def param_specs(config: PipelineConfig) -> list[ParamSpec]:
    """The trigger form of a pipeline: training knobs, the data source and each gate bound."""
    raw = config.model_dump(mode="json")
    specs = []
    for name, key in _PARAMS.items():
        value: Any = raw
        for part in key.split("."):
            value = value[part]
        kind, low, high, exclusive, text = _field_schema(key)
        choices: tuple[str, ...] = ()
        if name == "data_source":
            value, kind, low, high = value[0] if len(value) == 1 else "", "string", None, None
            text = _SOURCE_HELP + " Empty: the sources in the pipeline config."
        if name == "strategy":
            choices = STRATEGIES
        specs.append(ParamSpec(name, key, value, kind, low, high, text, choices, exclusive))
    for metric, bounds in config.gate.metrics.items():
        for bound in ("lower_bound", "upper_bound"):
            value = getattr(bounds, bound)
            if value is not None:
                word = "minimum" if bound == "lower_bound" else "maximum"
                name = f"{metric}_threshold" if bound == "lower_bound" or bounds.lower_bound is None else f"{metric}_{word}"
                # A trigger may make the gate stricter, never looser than the YAML's bound.
                low, high = (value, 1.0 if metric in _UNIT_METRICS else None) if bound == "lower_bound" else (
                    0.0 if metric in _UNIT_METRICS else None, value)
                specs.append(ParamSpec(
                    name, f"gate.metrics.{metric}.{bound}", value, "number", low, high,
                    f"Gate: the eval {metric} {word} a model needs to be pushed (at least as strict as the "
                    f"pipeline's {value:g}).",
                ))
    return specs


def overrides_from_params(config: PipelineConfig, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Airflow params (or ``dag_run.conf``) to dotted config overrides; unknown names are ignored
    here because Airflow itself holds other params (they were validated by the form)."""
    from tasks.trigger import check_gate_bound, check_source

    if not params:
        return {}
    overrides = {}
    for spec in param_specs(config):
        if spec.name in params and params[spec.name] is not None:
            value = params[spec.name]
            if spec.name == "data_source":
                if value == "" or [value] == list(config.data.source):
                    continue
                value = [check_source(config, value)]
            elif spec.key.startswith("gate."):
                value = check_gate_bound(config, spec.key, value)
            overrides[spec.key] = value
    return overrides


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
    # Told where each step's MLflow run is ({"run_id", "experiment_id", "run_url", "experiment_url"}),
    # as soon as it exists: the DAG pushes it to XCom for the Airflow UI's links.
    on_run: Callable[[dict[str, str]], None] | None = None

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.config.name, self.run_id, self.dag_id, self.orchestrator, self.settings.airflow_url)

    def output(self, name: str) -> str:
        return artifacts.output_uri(self.settings.artifact_root, self.config.name, self.run_id, name)

    def work_dir(self, step: str) -> Path:
        return self.settings.home / "work" / self.config.name / artifacts.safe_run_id(self.run_id) / step


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
    base = load_pipeline(pipeline)
    merged = {**overrides_from_params(base, params), **(overrides or {})}
    config = load_pipeline(pipeline, merged) if merged else base
    return RunContext(
        pipeline=str(resolve_pipeline_path(pipeline)),
        config=config,
        settings=settings,
        run_id=run_id,
        dag_id=dag_id or config.name,
        ds=ds,
        try_number=try_number,
        orchestrator=orchestrator,
        overrides=merged,
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
    return _tracking(settings.tracking_uri, settings.mlflow_artifact_location)


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
def _step(ctx: RunContext, name: str) -> Iterator[MlflowTracker]:
    tracking = tracking_for(ctx.settings)
    params = {"config": ctx.config.model_dump(mode="json"), "overrides": json.dumps(ctx.overrides),
              "code_version": code_version()}
    started = time.perf_counter()
    with tracking.step_run(ctx.identity, name, ctx.try_number, params=params) as tracker:
        if ctx.on_run is not None:
            experiment_id = tracking.experiment_id(ctx.config.name)
            ctx.on_run({"run_id": tracker.run_id, "experiment_id": experiment_id,
                        "run_url": run_url(ctx.settings.mlflow_ui_url, experiment_id, tracker.run_id),
                        "experiment_url": experiment_url(ctx.settings.mlflow_ui_url, experiment_id)})
        yield tracker
        tracker.log_metrics({"step_seconds": time.perf_counter() - started})


def _end_pipeline(ctx: RunContext, tracker: MlflowTracker, outcome: str) -> None:
    """Mark the parent run FINISHED: this step is the last one the run executes."""
    tracking = tracking_for(ctx.settings)
    tracking.client.set_tag(tracker.parent_run_id, "tfpipe.outcome", outcome)
    tracking.set_parent_status(tracker.parent_run_id, "FINISHED")


def curated_schema_path(ctx: RunContext) -> Path:
    """Where a pipeline's curated schema lives: ``validation.schema_file`` or ``<name>.schema.pbtxt``."""
    base = Path(ctx.pipeline).parent
    return base / (ctx.config.validation.schema_file or f"{Path(ctx.pipeline).stem}.schema.pbtxt")


def schema_in_force(ctx: RunContext) -> tuple[dict[str, str], str, str] | None:
    """(column kinds, ``curated`` or ``recorded``, where it is) of the schema the next run is held
    to; None before the first run that passed validation and training."""
    from tasks.validate import column_types, load_schema_text

    curated = curated_schema_path(ctx)
    if curated.is_file():
        return column_types(load_schema_text(curated.read_text(encoding="utf-8"))), "curated", str(curated)
    recorded = artifacts.recorded_schema_uri(ctx.settings.artifact_root, ctx.config.name)
    if storage.exists(recorded):
        return column_types(load_schema_text(storage.read_bytes(recorded).decode("utf-8"))), "recorded", recorded
    return None


def ingest_examples(ctx: RunContext) -> dict[str, Any]:
    from tasks.ingest import ingest_examples as ingest, render_sources

    with _step(ctx, "ingest_examples") as tracker:
        variables = {"ds": ctx.ds or "", "ds_nodash": (ctx.ds or "").replace("-", ""), "run_id": ctx.run_id}
        sources = render_sources(ctx.config.data.source, variables)
        schema = schema_in_force(ctx)  # every run reads the columns alike
        types = schema[0] if schema else {}
        tracker.log_params({"sources": json.dumps(sources), "column_types_from": schema[2] if schema else "data"})
        try:
            result = ingest(ctx.config, sources, ctx.output("examples"), ctx.work_dir("ingest_examples"),
                            column_types=types)
        except DataError as error:
            raise _with_schema_hint(ctx, error, schema) from error
        tracker.log_metrics({f"examples_{split}": count for split, count in result.counts.items()})
        tracker.log_metrics({"rows": result.rows, "rows_per_second": result.rows / max(result.seconds, 1e-9),
                             "rows_without_label": result.unlabeled})
        if result.warnings:
            tracker.set_tags({"tfpipe.split_warnings": " | ".join(result.warnings)[:5000]})
        log.info("ingested %s examples into %s", result.counts, result.uri)
        tracker.log_dict(json.loads(storage.read_bytes(storage.join(result.uri, "manifest.json"))),
                         "examples/manifest.json")
        tracker.set_tags({"tfpipe.examples_uri": result.uri})
        return result.to_dict()


def _with_schema_hint(ctx: RunContext, error: DataError, schema: tuple[dict[str, str], str, str] | None):
    """A bad value in a column whose type the schema in force gave: say where the type came from
    and how to let go of it."""
    if schema is None:
        return error
    types, source, location = schema
    typed = [c for c in types if c not in ctx.config.data.column_types and f"column {c!r} holds" in str(error)]
    if not typed:
        return error
    fix = (f"edit the curated schema {location}" if source == "curated" else
           f"if the data changed on purpose, discard the recorded schema: tfpipe schema {ctx.config.name} --reset")
    return DataError(f"{error} (the type of {typed[0]!r} comes from the {source} schema, {location}; {fix})")


def validate_examples(ctx: RunContext, examples: Mapping[str, Any]) -> dict[str, Any]:
    from tasks.validate import DataValidationError, format_report, validate_examples as validate

    with _step(ctx, "validate_examples") as tracker:
        recorded = artifacts.recorded_schema_uri(ctx.settings.artifact_root, ctx.config.name)
        try:
            result = validate(
                examples["uri"], ctx.output("statistics"), ctx.output("anomalies"), recorded,
                ctx.config.label, ctx.settings.cache_dir, ctx.work_dir("validate_examples"),
                settings=ctx.config.validation, curated_schema=curated_schema_path(ctx),
                baseline_uri=artifacts.baseline_statistics_uri(ctx.settings.artifact_root, ctx.config.name),
                run_id=ctx.run_id, pipeline=ctx.config.name,
            )
        except DataValidationError as error:
            tracker.log_metrics({"anomalies": len(error.report)})
            tracker.log_dict(error.report, "anomalies/report.json")
            tracker.log_text(format_report(error.report), "anomalies/report.txt")
            _log_dir(tracker, ctx.output("statistics"), ctx, "statistics")
            # The error itself carries the report (and Airflow shows it): the log only says where it is kept.
            log.error("the data did not pass validation: %d anomalies; report in MLflow run %s, "
                      "anomalies/report.txt", len(error.report), tracker.run_id)
            raise
        tracker.log_metrics({"anomalies": 0, "validate_seconds": result.seconds})
        tracker.log_params({"schema_source": result.schema_source, "recorded_schema": recorded,
                            "baseline_run": result.baseline_run or ""})
        _log_dir(tracker, result.statistics_uri, ctx, "statistics")
        _log_dir(tracker, result.anomalies_uri, ctx, "anomalies")
        return result.to_dict()


def _log_dir(tracker: MlflowTracker, uri: str, ctx: RunContext, artifact_path: str) -> None:
    if storage.is_s3(uri) or storage.local_path(uri).is_dir():
        local = storage.materialize(uri, ctx.settings.cache_dir)
        for item in sorted(local.iterdir()):
            if not item.name.startswith((".", "_")):
                tracker.log_artifact(item, artifact_path)


def train_model(ctx: RunContext, examples: Mapping[str, Any], validation: Mapping[str, Any]) -> dict[str, Any]:
    from tasks.model import model_spec_from
    from tasks.plots import training_curves
    from tasks.train import TENSORBOARD_DIR, read_history
    from tasks.validate import load_schema, load_statistics

    with _step(ctx, "train_model") as tracker:
        cache = ctx.settings.cache_dir
        spec = model_spec_from(
            load_schema(validation["statistics_uri"], cache),
            load_statistics(validation["statistics_uri"], "train", cache),
            label=ctx.config.label,
            task=ctx.config.task.value,
            features=[c for c in examples["columns"] if c != ctx.config.label],
            hidden_units=ctx.config.train.hidden_units,
            embedding_dim=ctx.config.train.embedding_dim,
        )
        tracker.log_params({"train": ctx.config.train.model_dump(mode="json")})
        work = ctx.work_dir("train_model")
        mirror = checkpoint_mirror(ctx)
        result = _run_training(ctx, tracker, examples["uri"], spec, work)
        history = read_history(result["uri"])
        tracker.log_metrics({f"final_{k}": v for k, v in result["final_metrics"].items()})
        tracker.set_tags({
            "tfpipe.strategy": result["strategy"], "tfpipe.replicas": str(result["replicas"]),
            "tfpipe.workers": str(result["workers"]), "tfpipe.resumed_from_step": str(result["resumed_from_step"]),
            "tfpipe.best_epoch": str(result["best_epoch"]), "tfpipe.stopped_early": str(result["stopped_early"]),
            **({"tfpipe.checkpoint_mirror": mirror,
                "tfpipe.checkpoint_files_mirrored": str(result["checkpoint_files_mirrored"])} if mirror else {}),
        })
        with _scratch(ctx, "train_model") as scratch:
            training_curves(history, scratch / "training_curves.png")
            tracker.log_artifact(scratch / "training_curves.png", "plots")
        _log_model(ctx, tracker, result["uri"], examples["uri"], spec)
        # The run's model is published: what a retry would resume from is no longer needed.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        if mirror:
            storage.delete_dir(mirror)
        shutil.rmtree(work / TENSORBOARD_DIR, ignore_errors=True)
        _record_passing_run(ctx, tracker, validation)
        # Where the MLflow model is (model/ of this run): what the registry version of a push points to.
        return {**result, "mlflow_run_id": tracker.run_id}


def _record_passing_run(ctx: RunContext, tracker: MlflowTracker, validation: Mapping[str, Any]) -> None:
    """The data passed validation and trained: its inferred schema is recorded (enforced from now
    on) and its statistics become the next run's drift baseline. Not before: a run that failed in
    training must not leave a schema that the next run, fixed, is then checked against."""
    from tasks.validate import record_passing_run

    root, name = ctx.settings.artifact_root, ctx.config.name
    recorded_uri = artifacts.recorded_schema_uri(root, name)
    if record_passing_run(validation["statistics_uri"], validation["schema_source"], recorded_uri,
                          artifacts.baseline_statistics_uri(root, name), ctx.run_id):
        tracker.set_tags({"tfpipe.recorded_schema": recorded_uri})
        log.info("recorded the inferred schema at %s: later runs are validated against it "
                 "(tfpipe schema %s --reset discards it)", recorded_uri, name)


def _log_model(ctx: RunContext, tracker: MlflowTracker, model_uri: str, examples_uri: str, spec) -> None:
    """The model as an MLflow model (pyfunc over the SavedModel, signature, input example from the
    eval split) at ``model/``, beside its spec, history and TensorBoard logs."""
    from importlib import metadata

    from tasks.ingest import read_manifest, split_files
    from tasks.inputs import example_frame
    from tasks.train import SAVED_MODEL_DIR

    cache = ctx.settings.cache_dir
    local_model = storage.materialize(model_uri, cache)
    local_examples = storage.materialize(examples_uri, cache)
    frame = example_frame(split_files(local_examples, read_manifest(examples_uri), "eval"), spec, rows=5)
    requirements = [f"{name}=={metadata.version(name)}" for name in ("tensorflow", "tf-keras", "pandas", "mlflow")]
    tracker.log_saved_model(local_model / SAVED_MODEL_DIR, {f.name: f.kind for f in spec.features}, frame,
                            "model", requirements)
    for item in sorted(local_model.iterdir()):
        if item.name != SAVED_MODEL_DIR and not item.name.startswith((".", "_")):
            tracker.log_artifact(item, "model")


def checkpoint_mirror(ctx: RunContext) -> str | None:
    """Where training copies its checkpoints: beside the run's artifacts when they are on S3
    (a retry may run on another machine), else nowhere (the local checkpoints are enough)."""
    if not storage.is_s3(ctx.settings.artifact_root):
        return None
    return artifacts.checkpoints_uri(ctx.settings.artifact_root, ctx.config.name, ctx.run_id)


def _run_training(ctx: RunContext, tracker: MlflowTracker, examples_uri: str, spec, work: Path) -> dict[str, Any]:
    """Train in this process, or in worker processes when the strategy needs them.

    ``multi_worker`` without a ``TF_CONFIG`` starts ``train.workers`` local workers
    (``parameter_server``: a chief, the workers and ``train.parameter_servers``); a
    ``mirrored`` CPU split in a process where TensorFlow already ran (``tfpipe run``) trains
    in one fresh worker process. Either way the checkpoints are the same, so retries resume.
    """
    import os

    from tasks.launcher import launch
    from tasks.tracking import BatchedProgress, system_metrics
    from tasks.train import DevicesAlreadyInitialized, train_model as train

    params = ctx.config.train
    mirror = checkpoint_mirror(ctx)  # a try on another machine resumes from this copy (train_model restores it)
    request = {
        "examples_uri": examples_uri,
        "spec": spec.to_dict(),
        "params": params.model_dump(mode="json"),
        "output_uri": ctx.output("model"),
        "checkpoint_dir": str(work / "checkpoints"),
        "cache_dir": str(ctx.settings.cache_dir),
        "work_dir": str(work),
        "search_path": [str(Path(ctx.pipeline).parent)],
        "tracking": {"uri": redact(ctx.settings.tracking_uri), "run_id": tracker.run_id},
        "checkpoint_uri": mirror,
    }
    tf_config = os.environ.get("TF_CONFIG")
    if params.strategy == "multi_worker" and not tf_config:
        log.info("starting %d training workers on 127.0.0.1", params.workers)
        return launch(request, params.workers, work / "workers")
    if params.strategy == "parameter_server" and not tf_config:
        log.info("starting a parameter-server cluster on 127.0.0.1: a chief, %d workers, %d parameter servers",
                 params.workers, params.parameter_servers)
        return launch(request, params.workers, work / "workers", parameter_servers=params.parameter_servers)
    progress = BatchedProgress(tracker)
    try:
        with system_metrics(ctx.settings.tracking_uri, tracker.run_id, "worker-0"):
            return train(examples_uri, spec, params, request["output_uri"], work / "checkpoints",
                         ctx.settings.cache_dir, work, progress=progress,
                         search_path=tuple(request["search_path"]), tf_config=tf_config,
                         checkpoint_uri=mirror).to_dict()
    except DevicesAlreadyInitialized:
        log.info("TensorFlow already runs in this process: training in a fresh worker process")
        return launch(request, 1, work / "workers")
    finally:
        progress.flush()


@contextmanager
def _scratch(ctx: RunContext, step: str) -> Iterator[Path]:
    import tempfile

    base = ctx.work_dir(step)
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=base, prefix="log-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def evaluate_model(ctx: RunContext, examples: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    from tasks.evaluate import evaluate_model as evaluate, format_checks
    from tasks.release.model_store import champion, champion_state

    with _step(ctx, "evaluate_model") as tracker:
        baseline = champion(ctx.settings.model_store, ctx.config.model_name)
        state = champion_state(ctx.settings.model_store, ctx.config.model_name)  # what the push will compare
        blessing = evaluate(model["uri"], examples["uri"], ctx.config.gate, baseline,
                            ctx.output("evaluation"), ctx.settings.cache_dir, ctx.work_dir("evaluate_model"),
                            champion_generation=state[1] if state else None)
        record = blessing.to_dict()
        tracker.log_metrics(blessing.metrics)
        if blessing.baseline:
            tracker.log_metrics({f"champion_{k}": v for k, v in blessing.baseline["metrics"].items()})
        if blessing.trivial:
            tracker.log_metrics({f"baseline_{k}": v for k, v in blessing.trivial["metrics"].items()
                                 if k != "example_count"})
            tracker.set_tags({"tfpipe.baseline": blessing.trivial["description"]})
        # "island=Dream" -> slice/island/Dream/accuracy (MLflow keys allow no "=")
        tracker.log_metrics({
            f"slice/{_metric_key(name.replace('=', '/', 1))}/{metric}": value
            for name, values in blessing.slice_metrics.items() for metric, value in values.items()
        })
        tracker.log_dict(record, "evaluation/blessing.json")
        tracker.log_text(format_checks(record), "evaluation/blessing.txt")
        _log_dir(tracker, storage.join(blessing.uri, "plots"), ctx, "plots")
        tracker.set_tags({"tfpipe.blessed": str(blessing.blessed).lower()})
        tracker.log_headline(blessing=record)
        log.info("%s", format_checks(record))
        if not blessing.blessed:
            _end_pipeline(ctx, tracker, "not_blessed")
        return record


def _metric_key(text: str) -> str:
    """Text as part of an MLflow metric name (letters, digits, ``_-. /:`` only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def gate(blessing: Mapping[str, Any]) -> dict[str, Any] | None:
    """The blessing when blessed, else None: what a short-circuit task returns to skip the rest."""
    return dict(blessing) if blessing.get("blessed") else None


def optimize_model(ctx: RunContext, examples: Mapping[str, Any], model: Mapping[str, Any],
                   blessing: Mapping[str, Any]) -> dict[str, Any]:
    from tasks.optimize import CHART_FILE, Measurement, format_report, optimize_model as optimize

    with _step(ctx, "optimize_model") as tracker:
        options = ctx.config.optimize
        train = ctx.config.train
        builder = None
        if train.model_fn:  # prune the pipeline's own model, built as training built it
            from tasks.train import build

            builder = lambda spec: build(spec, train, (str(Path(ctx.pipeline).parent),))  # noqa: E731
        result = optimize(
            model["uri"], examples["uri"], options.max_accuracy_drop, ctx.output("optimized"),
            ctx.settings.cache_dir, ctx.work_dir("optimize_model"), variants=tuple(options.variants),
            representative_examples=options.representative_examples,
            pruning={**options.pruning.model_dump(), "batch_size": options.pruning.batch_size or train.batch_size},
            measurement=Measurement(latency_runs=options.latency_runs, throughput_batch=options.throughput_batch),
            build_model=builder, max_rmse_increase=options.max_rmse_increase,
        )
        for variant, row in result.report["variants"].items():
            tracker.log_metrics({f"{variant}.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_dict(result.report, "optimization/report.json")
        tracker.log_text(format_report(result.report), "optimization/report.txt")
        with _scratch(ctx, "optimize_model") as scratch:
            storage.download_file(storage.join(result.uri, CHART_FILE), scratch / CHART_FILE)
            tracker.log_artifact(scratch / CHART_FILE, "plots")
        log.info("optimization report:\n%s", format_report(result.report))
        return result.to_dict()


def push_model(ctx: RunContext, examples: Mapping[str, Any], model: Mapping[str, Any],
               blessing: Mapping[str, Any], optimized: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Push, check that the pushed version serves, register it, make it champion, prune old versions.

    A transaction (docs/release.md): the version is claimed by this DAG run, so a retry finishes
    the same version; it is promoted only if the champion is still the one its blessing was
    evaluated against (compare-and-swap), after it was loaded back from the store and answered
    its warm-up requests as the model did before the push, and after its registry version
    exists. If another push promoted a version meanwhile (concurrent runs, a backfill), the model
    is gated again against that champion; after a rollback it is refused. If anything fails once
    it is champion (``models.config``, TF Serving, the registry alias), the previous champion is
    restored before the error is raised.
    """
    from tasks.evaluate import read_blessing
    from tasks.release import model_store, promotion

    with _step(ctx, "push_model") as tracker:
        recover_store(ctx.settings, ctx.config.model_name)  # a promotion whose process died
        # Re-read the published blessing rather than trusting what came through XCom.
        verdict = read_blessing(blessing["uri"])
        if verdict["model_uri"] != model["uri"]:
            raise ValueError(f"blessing {blessing['uri']} is for {verdict['model_uri']}, not {model['uri']}")
        owner = f"{ctx.dag_id}/{ctx.run_id}"
        pushed = change = None
        for _attempt in range(5):  # each lost compare-and-swap gates the model again
            verdict = _current_blessing(ctx, tracker, examples, model, verdict, owner)
            if not verdict["blessed"]:
                return _not_promoted(ctx, tracker, verdict, pushed)
            if pushed is None:
                pushed, warmup, expected = _push_files(ctx, examples, model, verdict, optimized, owner)
                checks = {"store": _check_store(ctx, pushed, expected)}
                registry_version = _register(ctx, tracker, examples, model, pushed)
            try:
                change, served = promotion.promote(
                    ctx.settings, ctx.config.model_name, pushed.version, owner, registry_for(ctx.settings),
                    registry_version, _state(verdict), _served_before(ctx.settings.model_store,
                                                                      ctx.config.model_name, pushed.version),
                    warmup, expected, ctx.config.push.serving_timeout_seconds)
                if served is not None:
                    checks["tf_serving"] = served
                break
            except model_store.StaleBlessingError:
                continue  # the champion changed between the check and the swap: gate again
        if change is None:
            raise RuntimeError(f"{ctx.config.model_name}: the champion kept changing while v{pushed.version} was "
                               "promoted; try again")
        return _pushed(ctx, tracker, pushed, change, checks, registry_version, verdict)


def _state(verdict: Mapping[str, Any]) -> tuple[int, int | None] | None:
    against = verdict.get("evaluated_against")
    return (against["version"], against.get("generation")) if against else None


def _current_blessing(ctx: RunContext, tracker: MlflowTracker, examples: Mapping[str, Any],
                      model: Mapping[str, Any], verdict: dict[str, Any], owner: str) -> dict[str, Any]:
    """The blessing, valid against what serves now: as published when the champion is still the one
    it measured (or this run's own version, a retry); gated again against a champion another push
    promoted meanwhile. After a rollback the push is refused: the gate cannot know why it was rolled
    back, and must not undo it."""
    from tasks.release import model_store
    from tasks.evaluate import evaluate_model, format_checks

    store, name = ctx.settings.model_store, ctx.config.model_name
    mine = model_store.claimed_by(store, name, owner)
    served, evaluated = _served_before(store, name, mine), _state(verdict)
    if served == evaluated or (served is not None and served[0] == mine):
        return verdict
    if model_store.rolled_back_since(store, name, evaluated[1] if evaluated else None):
        raise model_store.StaleBlessingError(
            f"refusing to push {name}: the champion was rolled back to {model_store.describe_state(served)} after "
            f"this run's blessing was evaluated against {model_store.describe_state(evaluated)}; trigger a new run to "
            "evaluate against what serves now")
    log.warning("the champion of %s is %s, not %s as when this run evaluated: gating the model again", name,
                model_store.describe_state(served), model_store.describe_state(evaluated))
    state = model_store.champion_state(store, name)
    blessing = evaluate_model(model["uri"], examples["uri"], ctx.config.gate, model_store.champion(store, name),
                              storage.join(ctx.output("evaluation"), f"regated-{state[0] if state else 0}"),
                              ctx.settings.cache_dir, ctx.work_dir("push_model"),
                              champion_generation=state[1] if state else None)
    record = blessing.to_dict()
    tracker.log_text(format_checks(record), f"push/regated-v{state[0] if state else 0}.txt")
    log.info("gated again:\n%s", format_checks(record))
    return record


def _not_promoted(ctx: RunContext, tracker: MlflowTracker, verdict: Mapping[str, Any], pushed) -> dict[str, Any]:
    """Gated again against a newer champion, the model is not blessed: nothing of it stays served."""
    from tasks.release import model_store

    if pushed is not None:
        model_store.discard_version(ctx.settings.model_store, ctx.config.model_name, pushed.version)
    tracker.set_tags({"tfpipe.pushed": "false"})
    log.warning("%s is not pushed: gated again against the champion another run promoted meanwhile, it is not "
                "blessed (%s)", ctx.config.model_name,
                "; ".join(r for r, c in zip(verdict["reasons"], verdict["checks"]) if c["passed"] is False))
    _end_pipeline(ctx, tracker, "not_blessed_against_the_new_champion")
    return {"pushed": False, "model_name": ctx.config.model_name, "reasons": verdict["reasons"]}


def _pushed(ctx: RunContext, tracker: MlflowTracker, pushed, change, checks, registry_version: str,
            verdict: Mapping[str, Any]) -> dict[str, Any]:
    """Record and log what was pushed (retention included)."""
    settings, name = ctx.settings, ctx.config.model_name
    removed = _retention(ctx)
    record = {**pushed.to_dict(), "pushed": True, "registry_version": registry_version, "champion": change.version,
              "previous_champion": change.previous, "checks": checks, "removed_versions": removed,
              "evaluated_against": verdict.get("evaluated_against")}
    tracker.log_params({"pushed_uri": pushed.uri, "pushed_version": pushed.version})
    tracker.log_metrics({"pushed_bytes": pushed.bytes, "pushed_files": pushed.files,
                         "store_check_max_abs_diff": checks["store"]["max_abs_diff"]})
    tracker.log_dict(record, "push/pushed_model.json")
    tracker.set_tags({"tfpipe.pushed_uri": pushed.uri, "tfpipe.registry_version": registry_version,
                      "tfpipe.champion": str(change.version)})
    tracker.log_headline(pushed=record, mlflow_ui_url=settings.mlflow_ui_url)
    log.info("pushed %s v%d (%d files, %d bytes, %d warm-up requests); champion: v%d%s", name, pushed.version,
             pushed.files, pushed.bytes, pushed.warmup_requests, change.version,
             f"; removed old versions {removed}" if removed else "")
    _end_pipeline(ctx, tracker, "pushed")
    return record


def _served_before(store: str, name: str, mine: int | None) -> tuple[int, int | None] | None:
    """The champion state as a blessing sees it: the pointer's, else (a store without one yet) the
    newest complete version other than this run's own."""
    from tasks.release import model_store

    if model_store.read_champion(store, name) is not None:
        return model_store.champion_state(store, name)
    others = [v for v in model_store.versions(store, name) if v != mine]
    return (others[-1], None) if others else None


def _push_files(ctx: RunContext, examples: Mapping[str, Any], model: Mapping[str, Any], verdict: dict[str, Any],
                optimized: Mapping[str, Any] | None, owner: str):
    """Copy the model into its claimed version (a retry finishes the same one); returns it with the
    warm-up records and what the model answers them before the push."""
    from tasks.coders import first_records
    from tasks.evaluate import predict
    from tasks.ingest import read_manifest, split_files
    from tasks.release.push import push_model as push
    from tasks.train import SAVED_MODEL_DIR

    settings, options = ctx.settings, ctx.config.push
    saved_model = storage.materialize(model["uri"], settings.cache_dir) / SAVED_MODEL_DIR
    # The first eval examples only: the split may be large.
    eval_files = split_files(storage.materialize(examples["uri"], settings.cache_dir),
                             read_manifest(examples["uri"]), "eval")
    warmup = first_records(eval_files, options.warmup_requests)
    expected = predict(saved_model, warmup)
    pushed = push(saved_model, verdict, settings.model_store, ctx.config.model_name, owner=owner,
                  warmup_records=warmup, variant_files=_kept_variants(ctx, optimized) if options.publish_variants
                  else [], work_dir=ctx.work_dir("push_model"))
    return pushed, warmup, expected


def _check_store(ctx: RunContext, pushed, expected) -> dict[str, Any]:
    """Load the version back from the store: it must answer as the model did. A version that
    does not is removed."""
    from tasks.release import model_store, serving

    try:
        check = serving.check_pushed_model(pushed.uri, expected, ctx.settings.cache_dir)
    except serving.ServingCheckError:
        model_store.discard_version(ctx.settings.model_store, ctx.config.model_name, pushed.version)
        raise
    log.info("v%d loaded back from %s and answered %d warm-up requests as before the push",
             pushed.version, pushed.uri, check["requests"])
    return check


def _register(ctx: RunContext, tracker: MlflowTracker, examples: Mapping[str, Any], model: Mapping[str, Any],
              pushed) -> str:
    """The version in the MLflow registry (the alias moves only once it is champion); a retry
    finds the registry version it created before."""
    from tasks.tracking import registry_version_for

    name = ctx.config.model_name
    found = registry_version_for(tracker.client, name, pushed.version)
    if found is not None:
        return found
    # The registry version is the MLflow model logged by train_model (pyfunc, signature, input
    # example); an MLflow server refuses a local path as a source. The store URI is a tag.
    source = f"runs:/{model['mlflow_run_id']}/model" if model.get("mlflow_run_id") else pushed.uri
    tags = {"store_uri": pushed.uri, "store_version": str(pushed.version), "pipeline": ctx.config.name,
            "dag_id": ctx.dag_id, "run_id": ctx.run_id, "push_mlflow_run_id": tracker.run_id,
            "model_uri": model["uri"], "code_version": code_version(), "data_version": _data_version(examples["uri"])}
    return tracker.register_model(name, source, tags, champion=False, source_run_id=model.get("mlflow_run_id"))


def registry_for(settings: Settings):
    """The MLflow Model Registry of ``settings``, as the release uses it."""
    from tasks.tracking import MlflowRegistry

    return MlflowRegistry(lambda: tracking_for(settings).client)


def recover_store(settings: Settings, model_name: str, operation: str | None = None) -> dict[str, Any] | None:
    """See :func:`tasks.release.promotion.recover`, with this settings' registry."""
    from tasks.release import promotion

    return promotion.recover(settings, model_name, registry_for(settings), operation)


def _retention(ctx: RunContext) -> list[int]:
    """Remove old versions; housekeeping that never fails a push that already serves (the next push
    retries it)."""
    from tasks.release import model_store

    try:
        return model_store.apply_retention(ctx.settings.model_store, ctx.config.model_name,
                                           ctx.config.push.keep_versions)
    except Exception as error:  # noqa: BLE001 - the version is champion; old versions can wait
        log.warning("retention of %s failed and is left to the next push: %s", ctx.config.model_name, error)
        return []


def _kept_variants(ctx: RunContext, optimized: Mapping[str, Any] | None) -> list[Path]:
    """The optimized variants that were kept, and their report, as local files."""
    if not optimized:
        return []
    local = storage.materialize(optimized["uri"], ctx.settings.cache_dir)
    rows = optimized["report"]["variants"]
    paths = [local / rows[name]["file"] for name in optimized.get("kept", []) if rows[name].get("file")]
    extras = [local / name for name in ("report.json", "tradeoff.png")]
    return [p for p in paths if p.exists()] + [p for p in extras if p.is_file()]


def _data_version(examples_uri: str) -> str:
    """The digests of the sources the model was trained on, from the examples manifest."""
    from tasks.ingest import read_manifest

    return ",".join(source["sha256"][:16] for source in read_manifest(examples_uri)["sources"])


def run_pipeline(ctx: RunContext, until: str | None = None, on_step=None) -> dict[str, Any]:
    """Run the steps in order in this process (``tfpipe run``); stops after ``until``.

    Returns:
        Step name to its record; a step that did not run is absent. Evaluation that does not
        bless the model ends the run before optimize and push, as the DAG's short-circuit does.
    """
    if until is not None and until not in STEPS:
        raise ValueError(f"unknown step {until!r}; steps are {', '.join(STEPS)}")
    results: dict[str, Any] = {}

    def run(name: str, fn, *args):
        started = time.perf_counter()
        results[name] = fn(ctx, *args)
        if on_step is not None:
            on_step(name, results[name], time.perf_counter() - started)
        if name == until and name != STEPS[-1]:
            # Stopped on purpose: the parent run ends FINISHED, not left RUNNING.
            tracking = tracking_for(ctx.settings)
            parent = tracking.parent_run_id(ctx.identity)
            tracking.client.set_tag(parent, "tfpipe.outcome", f"stopped_after_{name}")
            tracking.set_parent_status(parent, "FINISHED")
        return name == until

    if run("ingest_examples", ingest_examples):
        return results
    if run("validate_examples", validate_examples, results["ingest_examples"]):
        return results
    if run("train_model", train_model, results["ingest_examples"], results["validate_examples"]):
        return results
    if run("evaluate_model", evaluate_model, results["ingest_examples"], results["train_model"]):
        return results
    if not results["evaluate_model"]["blessed"]:
        return results
    if run("optimize_model", optimize_model, results["ingest_examples"], results["train_model"],
           results["evaluate_model"]):
        return results
    run("push_model", push_model, results["ingest_examples"], results["train_model"], results["evaluate_model"],
        results["optimize_model"])
    return results


def experiment_for_model(model_name: str) -> str:
    """The MLflow experiment of the pipeline that pushes ``model_name`` (else the model's name)."""
    from tasks.config import pipelines_by_model

    return pipelines_by_model().get(model_name, model_name)


def rollback_model(settings: Settings, model_name: str, to_version: int | None = None, by: str = "cli",
                   serving_timeout: float = 300.0, operation: str | None = None) -> dict[str, Any]:
    """Move the champion back (see :func:`tasks.release.promotion.rollback`), then the registry
    alias follows and the rollback is logged as an MLflow run.

    Args:
        operation: What asks for the rollback (a DAG run): its retry finishes this rollback
            rather than stepping back once more.

    Raises:
        ModelStoreError: No champion, or the version is not in the store.
        ServingCheckError: The version does not serve (the champion is what it was).
    """
    from tasks.release import promotion

    details = promotion.rollback(settings, model_name, registry_for(settings), to_version, by, serving_timeout,
                                 operation)
    details["mlflow"] = tracking_for(settings).record_rollback(
        experiment_for_model(model_name), model_name, details["from_version"], details["to_version"], by, details)
    log.info("rolled %s back from v%s to v%d", model_name, details["from_version"], details["to_version"])
    return details


def end_dag_run(settings: Settings, dag_id: str, run_id: str, state: str) -> str | None:
    """A DAG run ended (the listener in ``plugins/`` calls this). When it did not succeed, a promotion
    its push left uncommitted (a killed worker) is reverted first. Then see
    :meth:`MlflowTracking.end_pipeline_run`. A DAG that is no pipeline has no MLflow run: None."""
    if state != "success":
        from tasks.release import model_store

        try:
            for model_name in model_store.models(settings.model_store):
                recover_store(settings, model_name, operation=f"{dag_id}/{run_id}")
        except Exception as error:  # noqa: BLE001 - the lease reverts it later; the MLflow run still ends
            log.warning("could not check %s for a promotion %s/%s left pending: %s", settings.model_store, dag_id,
                        run_id, error)
    tracking = tracking_for(settings)
    return tracking.end_pipeline_run(dag_id, run_id, state)


def check_serving(settings: Settings, model_name: str, pushed: Mapping[str, Any] | None = None,
                  by: str = "cli", timeout: float = 300.0) -> dict[str, Any]:
    """Check what serves ``model_name`` (see :func:`tasks.release.serving.check_serving`) and log the
    check as an MLflow run (tag ``tfpipe.role=serving_check``), FAILED with the reason when it fails.

    Args:
        pushed: The push that triggered the check (the asset event's extra), recorded with it.

    Raises:
        ServingCheckError: What serves is not what it should be.
    """
    from tasks.release import serving

    recover_store(settings, model_name)
    tracking = tracking_for(settings)
    params = {"model_name": model_name, "store": settings.model_store, "serving_url": redact(settings.serving_url) or "",
              "triggered_by_version": (pushed or {}).get("version", "")}
    tags = {"tfpipe.model_name": model_name, "tfpipe.checked_by": by}
    try:
        report = serving.check_serving(settings.model_store, model_name, settings.cache_dir, settings.serving_url,
                                       timeout)
    except (serving.ServingCheckError, storage.ArtifactNotFoundError) as error:
        tracking.record_operation(experiment_for_model(model_name), f"serving check {model_name}", "serving_check",
                                  params, {"error": str(error), "pushed": dict(pushed or {})},
                                  {**tags, "tfpipe.serving_check": "failed"}, status="FAILED")
        raise
    report["mlflow_run_id"] = tracking.record_operation(
        experiment_for_model(model_name), f"serving check {model_name} v{report['version']}", "serving_check",
        params, {**report, "pushed": dict(pushed or {})},
        {**tags, "tfpipe.serving_check": "passed", "tfpipe.checked_version": str(report["version"])})
    log.info("serving check of %s: v%d intact (%d files), answers its %d warm-up requests%s", model_name,
             report["version"], report["files"], report["requests"],
             ", served by TensorFlow Serving" if "tf_serving" in report else "")
    return report
