"""
### tfpipe pipeline: {name}

{description}

Tabular data to a served TensorFlow model. Each task is one step of `tasks/` and one MLflow
child run under the DAG run's parent run (experiment **{name}**):

| task | what it does | artifact |
|---|---|---|
| `ingest_examples` | CSV/Parquet to GZIP TFRecord shards, deterministic train/eval split | `examples` |
| `validate_examples` | TFDV statistics; schema inferred once, then enforced; anomalies stop the run | `statistics`, `anomalies` |
| `train_model` | custom `tf.GradientTape` loop under `tf.distribute`, checkpointed | `model` |
| `evaluate_model` | eval metrics, gate against thresholds and the champion; **skips the rest unless blessed** | `evaluation` |
| `optimize_model` | TFLite float32, float16, dynamic-range and int8, a pruned model, TF-TRT on a GPU: size, latency, throughput and accuracy of each against the original | `optimized` |
| `push_model` | `<model_store>/{model_name}/<version>/` (checksums verified, warm-up requests, `saved_model.pb` last), loaded back and checked, then champion in `models.config` and the MLflow registry alias `champion`; updates the Asset `{model_name}_model`, which runs the `serving_check` DAG | `pushed_model` |

A bad champion is undone with the `rollback_model` DAG (or `tfpipe rollback {model_name}`).

Trigger with a config to override the training knobs, the data source or the gate
threshold (see the form). Config file: `dags/pipelines/{name}.yaml`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task

from dags.airflow_support import (DEFAULT_ARGS, MLFLOW_EXPERIMENT_URL, MLFLOW_RUN_URL, export_aws_connection,
                                   model_asset)

PIPELINES = Path(__file__).resolve().parent / "pipelines"

# Training and evaluation run long on big data; the rest should be quick.
TIMEOUTS = {
    "ingest_examples": timedelta(hours=2),
    "validate_examples": timedelta(hours=2),
    "train_model": timedelta(hours=12),
    "evaluate_model": timedelta(hours=2),
    "optimize_model": timedelta(hours=2),
    "push_model": timedelta(minutes=30),
}


def _context(pipeline_file: str, params, run_id: str, ds: str, ti):
    """The run's tfpipe context, built at task run time from Airflow's context."""
    from airflow.sdk import get_current_context

    from tasks.pipeline import make_context
    from tasks.settings import Settings

    export_aws_connection()
    if ds is None:  # manual runs have no logical date: partition by when the run was due
        ds = get_current_context()["dag_run"].run_after.date().isoformat()
    return make_context(
        pipeline_file,
        run_id=run_id,
        settings=Settings.from_env(),
        params=dict(params or {}),
        ds=ds,
        dag_id=ti.dag_id,
        try_number=ti.try_number,
        orchestrator="airflow",
        on_run=lambda run: _push_links(ti, run),
    )


def _push_links(ti, run: dict) -> None:
    """Where this task's MLflow run is, for the "MLflow run" and "MLflow experiment" links (plugins/)."""
    ti.xcom_push(key=MLFLOW_RUN_URL, value=run["run_url"])
    ti.xcom_push(key=MLFLOW_EXPERIMENT_URL, value=run["experiment_url"])


def build_dag(pipeline_file: Path):
    """One DAG per pipeline file; ``dag_id`` is the pipeline's name."""
    from tasks.config import load_pipeline
    from tasks.pipeline import param_specs

    config = load_pipeline(pipeline_file)
    params = {
        p.name: Param(
            p.default,
            type=p.type,
            description=p.description,
            **({"minimum": p.minimum} if p.minimum is not None else {}),
            **({"maximum": p.maximum} if p.maximum is not None else {}),
            **({"enum": list(p.choices)} if p.choices else {}),
        )
        for p in param_specs(config)
    }
    source = str(pipeline_file)
    asset = model_asset(config.model_name)

    @dag(
        dag_id=config.name,
        description=config.description or f"tfpipe pipeline {config.name}",
        doc_md=__doc__.format(name=config.name, model_name=config.model_name,
                              description=config.description),
        schedule=config.schedule,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=params,
        tags=["tfpipe", *config.tags],
    )
    def pipeline():
        @task(execution_timeout=TIMEOUTS["ingest_examples"])
        def ingest_examples(params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.ingest_examples(_context(source, params, run_id, ds, ti))

        @task(execution_timeout=TIMEOUTS["validate_examples"])
        def validate_examples(examples, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.validate_examples(_context(source, params, run_id, ds, ti), examples)

        @task(execution_timeout=TIMEOUTS["train_model"])
        def train_model(examples, validation, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.train_model(_context(source, params, run_id, ds, ti), examples, validation)

        @task.short_circuit(execution_timeout=TIMEOUTS["evaluate_model"])
        def evaluate_model(examples, model, params=None, run_id=None, ds=None, ti=None):
            """Returns the blessing when blessed; None (skip optimize and push) otherwise."""
            from tasks import pipeline as steps

            return steps.gate(steps.evaluate_model(_context(source, params, run_id, ds, ti), examples, model))

        @task(execution_timeout=TIMEOUTS["optimize_model"])
        def optimize_model(examples, model, blessing, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.optimize_model(_context(source, params, run_id, ds, ti), examples, model, blessing)

        @task(execution_timeout=TIMEOUTS["push_model"], retries=1, outlets=[asset])
        def push_model(examples, model, blessing, optimized, params=None, run_id=None, ds=None, ti=None,
                       outlet_events=None):
            """Updates the model's Asset (the serving_check DAG runs on it) with what was pushed."""
            from tasks import pipeline as steps

            pushed = steps.push_model(_context(source, params, run_id, ds, ti), examples, model, blessing, optimized)
            outlet_events[asset].extra = {
                "model_name": pushed["model_name"], "version": pushed["version"], "uri": pushed["uri"],
                "champion": pushed["champion"], "registry_version": pushed["registry_version"],
            }
            return pushed

        examples = ingest_examples()
        validation = validate_examples(examples)
        model = train_model(examples, validation)
        blessing = evaluate_model(examples, model)
        optimized = optimize_model(examples, model, blessing)
        push_model(examples, model, blessing, optimized)

    return pipeline()


for _file in sorted(PIPELINES.glob("*.yaml")):
    globals()[f"dag_{_file.stem}"] = build_dag(_file)
