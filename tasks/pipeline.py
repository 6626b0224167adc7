"""The pipeline's steps as called by Airflow and by ``tfpipe run``: each opens its MLflow child
run, calls the step function with explicit arguments, records what it produced, and returns its
typed record (:mod:`tasks.artifacts`: URIs, counts, metrics). :func:`run_step` is how both
orchestrators call a step: records travel between steps as plain JSON (XCom) and are read back
typed. The last step, the push, is in :mod:`tasks.release_steps`; :data:`tasks.steps.STEP_TABLE`
is the step table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.artifacts import Blessing, ExamplesArtifact, ModelArtifact, OptimizedArtifact, ValidationArtifact
from tasks.errors import DataError
from tasks.context import RunContext, curated_schema_path, end_pipeline, scratch_dir, step_run, tracking_for
from tasks.settings import redact
from tasks.steps import STEP_TABLE, STEPS, step_named
from tasks.tracking import MlflowTracker, flatten

log = logging.getLogger(__name__)

# The record each step returns (the push returns a plain summary: nothing reads it as input).
RECORDS: dict[str, type[artifacts.Record]] = {
    "ingest_examples": ExamplesArtifact, "validate_examples": ValidationArtifact, "train_model": ModelArtifact,
    "evaluate_model": Blessing, "optimize_model": OptimizedArtifact,
}


def step_function(name: str) -> Callable[..., Any]:
    """The function that runs step ``name``: ``fn(ctx, *records of its inputs)``."""
    if name == "push_model":
        from tasks.release_steps import push_model

        return push_model
    return {"ingest_examples": ingest_examples, "validate_examples": validate_examples, "train_model": train_model,
            "evaluate_model": evaluate_model, "optimize_model": optimize_model}[name]


def run_step(name: str, ctx: RunContext, *inputs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Run step ``name`` on its inputs as they travel (JSON records, in the step table's order):
    each is read back as its typed record, and the step's record goes back as JSON."""
    from tasks.reuse import run_cached

    step = step_named(name)
    typed = [None if record is None else RECORDS[source].of(record) for source, record in zip(step.inputs, inputs)]

    def compute(run_ctx: RunContext) -> dict[str, Any]:
        result = step_function(name)(run_ctx, *typed)
        return result.to_dict() if isinstance(result, artifacts.Record) else result

    # With ``cache: true`` a step whose inputs are unchanged reuses an earlier run's record (tasks/cache.py).
    record = run_cached(name, ctx, tuple(inputs), compute)
    if name == "ingest_examples":  # the data is known: what re-running this run needs (tasks/rerun.py)
        _record_for_rerun(ctx, record)
    return record


def _record_for_rerun(ctx: RunContext, examples: dict[str, Any]) -> None:
    from tasks.rerun import RERUN_FILE, record

    entry = record(ctx, examples)
    tracking = tracking_for(ctx.settings)
    tracking.client.log_dict(tracking.parent_run_id(ctx.identity), entry, RERUN_FILE)


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


def ingest_examples(ctx: RunContext) -> ExamplesArtifact:
    from tasks.ingest import ingest_examples as ingest, render_sources

    with step_run(ctx, "ingest_examples") as tracker:
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
        manifest = artifacts.Examples.open(result.uri).manifest
        tracker.log_dict(manifest, f"examples/{artifacts.EXAMPLES_MANIFEST}")
        tracker.log_dataset(manifest, ctx.config.name, "source", on_parent=True)
        tracker.set_tags({"tfpipe.examples_uri": result.uri})
        return result


def _log_examples(tracker: MlflowTracker, ctx: RunContext, examples_uri: str, context: str) -> None:
    """The examples a step reads, as its MLflow run's dataset input (tasks/tracking/datasets.py)."""
    tracker.log_dataset(artifacts.Examples.open(examples_uri).manifest, ctx.config.name, context)


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


def validate_examples(ctx: RunContext, examples: ExamplesArtifact) -> ValidationArtifact:
    from tasks.validate import DataValidationError, format_report, validate_examples as validate

    examples = ExamplesArtifact.of(examples)
    with step_run(ctx, "validate_examples") as tracker:
        _log_examples(tracker, ctx, examples.uri, "validation")
        recorded = artifacts.recorded_schema_uri(ctx.settings.artifact_root, ctx.config.name)
        try:
            result = validate(
                examples.uri, ctx.output("statistics"), ctx.output("anomalies"), recorded,
                ctx.config.label, ctx.settings.cache_dir, ctx.work_dir("validate_examples"),
                config=ctx.config.validation, curated_schema=curated_schema_path(ctx),
                baseline_uri=artifacts.baseline_statistics_uri(ctx.settings.artifact_root, ctx.config.name),
                run_id=ctx.run_id, pipeline=ctx.config.name,
            )
        except DataValidationError as error:
            tracker.log_metrics({"anomalies": len(error.report)})
            tracker.log_dict(error.report, f"anomalies/{artifacts.ANOMALIES_REPORT}")
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
        return result


def _log_dir(tracker: MlflowTracker, uri: str, ctx: RunContext, artifact_path: str) -> None:
    if storage.is_s3(uri) or storage.local_path(uri).is_dir():
        local = storage.materialize(uri, ctx.settings.cache_dir)
        for item in sorted(local.iterdir()):
            if not item.name.startswith((".", "_")):
                tracker.log_artifact(item, artifact_path)


def train_model(ctx: RunContext, examples: ExamplesArtifact, validation: ValidationArtifact) -> ModelArtifact:
    from tasks.training.model import model_spec_from
    from tasks.plots import training_curves
    from tasks.artifacts import TENSORBOARD_DIR
    from tasks.training.export import read_history
    from tasks.validate import load_schema, load_statistics

    examples, validation = ExamplesArtifact.of(examples), ValidationArtifact.of(validation)
    with step_run(ctx, "train_model") as tracker:
        _log_examples(tracker, ctx, examples.uri, "training")
        cache = ctx.settings.cache_dir
        spec = model_spec_from(
            load_schema(validation.statistics_uri, cache),
            load_statistics(validation.statistics_uri, "train", cache),
            label=ctx.config.label,
            task=ctx.config.task.value,
            features=[c for c in examples.columns if c != ctx.config.label],
            hidden_units=ctx.config.train.hidden_units,
            embedding_dim=ctx.config.train.embedding_dim,
        )
        tracker.log_params({"train": ctx.config.train.model_dump(mode="json")})
        work = ctx.work_dir("train_model")
        mirror = checkpoint_mirror(ctx)
        result = _run_training(ctx, tracker, examples.uri, spec, work)
        history = read_history(result.uri)
        tracker.log_metrics({f"final_{k}": v for k, v in result.final_metrics.items()})
        tracker.set_tags({
            "tfpipe.strategy": result.strategy, "tfpipe.replicas": str(result.replicas),
            "tfpipe.workers": str(result.workers), "tfpipe.resumed_from_step": str(result.resumed_from_step),
            "tfpipe.best_epoch": str(result.best_epoch), "tfpipe.stopped_early": str(result.stopped_early),
            **({"tfpipe.checkpoint_mirror": mirror,
                "tfpipe.checkpoint_files_mirrored": str(result.checkpoint_files_mirrored)} if mirror else {}),
        })
        with scratch_dir(ctx, "train_model") as scratch:
            training_curves(history, scratch / "training_curves.png")
            tracker.log_artifact(scratch / "training_curves.png", "plots")
        model_id = _log_model(ctx, tracker, result, examples.uri, spec)
        # The run's model is published: what a retry would resume from is no longer needed.
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
        if mirror:
            storage.delete_dir(mirror)
        shutil.rmtree(work / TENSORBOARD_DIR, ignore_errors=True)
        _record_passing_run(ctx, tracker, validation)
        # The MLflow logged model: what the registry version of a push points to, what metrics link to.
        return dataclasses.replace(result, mlflow_run_id=tracker.run_id, mlflow_model_id=model_id)


def _record_passing_run(ctx: RunContext, tracker: MlflowTracker, validation: ValidationArtifact) -> None:
    """The data passed validation and trained: its inferred schema is recorded (enforced from now
    on) and its statistics become the next run's drift baseline. Not before: a run that failed in
    training must not leave a schema that the next run, fixed, is then checked against."""
    from tasks.validate import record_passing_run

    root, name = ctx.settings.artifact_root, ctx.config.name
    recorded_uri = artifacts.recorded_schema_uri(root, name)
    if record_passing_run(validation.statistics_uri, validation.schema_source, recorded_uri,
                          artifacts.baseline_statistics_uri(root, name), ctx.run_id):
        tracker.set_tags({"tfpipe.recorded_schema": recorded_uri})
        log.info("recorded the inferred schema at %s: later runs are validated against it "
                 "(tfpipe schema %s --reset discards it)", recorded_uri, name)


def _log_model(ctx: RunContext, tracker: MlflowTracker, model: ModelArtifact, examples_uri: str, spec) -> str:
    """The model as an MLflow 3 logged model (pyfunc over the SavedModel, signature, input example
    from the eval split, the training settings as its params); its spec, history and TensorBoard
    logs as the run's artifacts at ``model/``. Returns the model ID."""
    from importlib import metadata

    from tasks.artifacts import SAVED_MODEL_DIR, Examples
    from tasks.training.inputs import example_frame

    cache = ctx.settings.cache_dir
    saved_model = model.saved_model(cache)
    frame = example_frame(Examples.open(examples_uri).files("eval", cache), spec, rows=5)
    requirements = [f"{name}=={metadata.version(name)}" for name in ("tensorflow", "tf-keras", "pandas", "mlflow")]
    params = flatten({"train": ctx.config.train.model_dump(mode="json")})
    tags = {"tfpipe.pipeline": ctx.config.name, "tfpipe.run_id": ctx.run_id, "tfpipe.model_uri": model.uri,
            "tfpipe.task": str(getattr(ctx.config.task, "value", ctx.config.task)), "tfpipe.label": ctx.config.label}
    model_id = tracker.log_saved_model(saved_model, {f.name: f.kind for f in spec.features}, frame,
                                       ctx.config.model_name, requirements, params=params, tags=tags)
    for item in sorted(saved_model.parent.iterdir()):
        if item.name != SAVED_MODEL_DIR and not item.name.startswith((".", "_")):
            tracker.log_artifact(item, "model")
    return model_id


def checkpoint_mirror(ctx: RunContext) -> str | None:
    """Where training copies its checkpoints: beside the run's artifacts when they are on S3
    (a retry may run on another machine), else nowhere (the local checkpoints are enough)."""
    if not storage.is_s3(ctx.settings.artifact_root):
        return None
    return artifacts.checkpoints_uri(ctx.settings.artifact_root, ctx.config.name, ctx.run_id)


def _run_training(ctx: RunContext, tracker: MlflowTracker, examples_uri: str, spec, work: Path) -> ModelArtifact:
    """Train in this process, or in worker processes when the strategy needs them.

    ``multi_worker`` without a ``TF_CONFIG`` starts ``train.workers`` local workers
    (``parameter_server``: a chief, the workers and ``train.parameter_servers``); a
    ``mirrored`` CPU split in a process where TensorFlow already ran (``tfpipe run``) trains
    in one fresh worker process. Either way the checkpoints are the same, so retries resume.
    """
    import os

    from tasks.training.launcher import launch
    from tasks.tracking import BatchedProgress, system_metrics
    from tasks.training.distribution import DevicesAlreadyInitialized
    from tasks.training.loop import train_model as train

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
    if params.runner == "kubernetes":  # pods submitted and waited for (under Airflow: the task defers)
        from tasks.training.kubernetes_runner import train_on_kubernetes

        return ModelArtifact.of(train_on_kubernetes(ctx, request))
    tf_config = os.environ.get("TF_CONFIG")
    if params.strategy == "multi_worker" and not tf_config:
        log.info("starting %d training workers on 127.0.0.1", params.workers)
        return ModelArtifact.of(launch(request, params.workers, work / "workers"))
    if params.strategy == "parameter_server" and not tf_config:
        log.info("starting a parameter-server cluster on 127.0.0.1: a chief, %d workers, %d parameter servers",
                 params.workers, params.parameter_servers)
        return ModelArtifact.of(launch(request, params.workers, work / "workers",
                                       parameter_servers=params.parameter_servers))
    progress = BatchedProgress(tracker)
    try:
        with system_metrics(ctx.settings.tracking_uri, tracker.run_id, "worker-0"):
            return train(examples_uri, spec, params, request["output_uri"], work / "checkpoints",
                         ctx.settings.cache_dir, work, progress=progress,
                         search_path=tuple(request["search_path"]), tf_config=tf_config,
                         checkpoint_uri=mirror)
    except DevicesAlreadyInitialized:
        log.info("TensorFlow already runs in this process: training in a fresh worker process")
        return ModelArtifact.of(launch(request, 1, work / "workers"))
    finally:
        progress.flush()


def evaluate_model(ctx: RunContext, examples: ExamplesArtifact, model: ModelArtifact) -> Blessing:
    from tasks.evaluate import evaluate_model as evaluate, format_checks
    from tasks.release.model_store import champion, champion_state

    examples, model = ExamplesArtifact.of(examples), ModelArtifact.of(model)
    with step_run(ctx, "evaluate_model") as tracker:
        _log_examples(tracker, ctx, examples.uri, "evaluation")
        baseline = champion(ctx.settings.model_store, ctx.config.model_name)
        state = champion_state(ctx.settings.model_store, ctx.config.model_name)  # what the push will compare
        blessing = evaluate(model.uri, examples.uri, ctx.config.gate, baseline,
                            ctx.output("evaluation"), ctx.settings.cache_dir, ctx.work_dir("evaluate_model"),
                            champion_generation=state[1] if state else None)
        record = blessing.to_dict()
        tracker.log_model_input(model.mlflow_model_id)
        tracker.log_model_metrics(model.mlflow_model_id, blessing.metrics, _dataset_of(ctx, examples.uri))
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
        tracker.log_dict(record, f"evaluation/{artifacts.BLESSING_FILE}")
        tracker.log_text(format_checks(blessing), "evaluation/blessing.txt")
        _log_dir(tracker, storage.join(blessing.uri, artifacts.PLOTS_DIR), ctx, "plots")
        tracker.set_tags({"tfpipe.blessed": str(blessing.blessed).lower()})
        tracker.log_headline(blessing=record)
        log.info("%s", format_checks(blessing))
        if not blessing.blessed:
            end_pipeline(ctx, tracker, "not_blessed")
        return blessing


def _dataset_of(ctx: RunContext, examples_uri: str) -> dict[str, str]:
    """The MLflow dataset (name, digest) of the examples, as their dataset input names it."""
    from tasks.tracking.datasets import data_digest

    return {"name": ctx.config.name, "digest": data_digest(artifacts.Examples.open(examples_uri).manifest)}


def _metric_key(text: str) -> str:
    """Text as part of an MLflow metric name (letters, digits, ``_-. /:`` only)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text)


def gate(blessing: Mapping[str, Any]) -> dict[str, Any] | None:
    """The blessing when blessed, else None: what a short-circuit task returns to skip the rest."""
    return dict(blessing) if blessing.get("blessed") else None


def optimize_model(ctx: RunContext, examples: ExamplesArtifact, model: ModelArtifact,
                   blessing: Blessing) -> OptimizedArtifact:
    """Optimize a blessed model (``blessing`` orders the step after the gate; its verdict is the push's)."""
    from tasks.artifacts import CHART_FILE, REPORT_FILE
    from tasks.optimize import format_report, optimize_model as optimize

    examples, model = ExamplesArtifact.of(examples), ModelArtifact.of(model)
    with step_run(ctx, "optimize_model") as tracker:
        options = ctx.config.optimize
        train = ctx.config.train
        builder = None
        if train.model_fn:  # prune and quantize the pipeline's own model, built as training built it
            from tasks.training.model import build

            builder = lambda spec: build(spec, train, (str(Path(ctx.pipeline).parent),))  # noqa: E731
        # Pruning and QAT fine-tune at the training batch size unless their section says otherwise.
        pruning = options.pruning.model_copy(update={"batch_size": options.pruning.batch_size or train.batch_size})
        qat = options.qat.model_copy(update={"batch_size": options.qat.batch_size or train.batch_size})
        result = optimize(model.uri, examples.uri, options.model_copy(update={"pruning": pruning, "qat": qat}),
                          ctx.output("optimized"), ctx.settings.cache_dir, ctx.work_dir("optimize_model"),
                          build_model=builder)
        tracker.log_model_input(model.mlflow_model_id)
        for variant, row in result.report["variants"].items():  # each variant's figures, linked to the model
            tracker.log_model_metrics(model.mlflow_model_id, {
                f"{variant}.{k}": v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_dict(result.report, f"optimization/{REPORT_FILE}")
        tracker.log_text(format_report(result.report), "optimization/report.txt")
        with scratch_dir(ctx, "optimize_model") as scratch:
            storage.download_file(storage.join(result.uri, CHART_FILE), scratch / CHART_FILE)
            tracker.log_artifact(scratch / CHART_FILE, "plots")
        # The variants that were kept, with their report, beside the model they were made from.
        local = storage.materialize(result.uri, ctx.settings.cache_dir)
        rows = result.report["variants"]
        kept = [local / rows[name]["file"] for name in result.kept if rows[name].get("file")]
        tracker.log_model_files(model.mlflow_model_id, [p for p in kept if p.exists()] + [local / REPORT_FILE],
                                "variants")
        log.info("optimization report:\n%s", format_report(result.report))
        return result


def run_pipeline(ctx: RunContext, until: str | None = None, on_step=None) -> dict[str, Any]:
    """Run the steps of :data:`STEP_TABLE` in order in this process (``tfpipe run``); stops after ``until``.

    Returns:
        Step name to its record, as JSON (as XCom holds it); a step that did not run is absent. Evaluation that does not
        bless the model ends the run before optimize and push, as the DAG's short-circuit does.
    """
    if until is not None and until not in STEPS:
        raise ValueError(f"unknown step {until!r}; steps are {', '.join(STEPS)}")
    results: dict[str, Any] = {}
    for step in STEP_TABLE:
        started = time.perf_counter()
        results[step.name] = run_step(step.name, ctx, *(results[name] for name in step.inputs))
        if on_step is not None:
            on_step(step.name, results[step.name], time.perf_counter() - started)
        if step.name == until:
            if step.name != STEPS[-1]:
                # Stopped on purpose: the parent run ends FINISHED, not left RUNNING.
                tracking = tracking_for(ctx.settings)
                parent = tracking.parent_run_id(ctx.identity)
                tracking.client.set_tag(parent, "tfpipe.outcome", f"stopped_after_{step.name}")
                tracking.set_parent_status(parent, "FINISHED")
            return results
        if step.gates and not results[step.name]["blessed"]:
            return results
    return results