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

With `push.approval: required`, the task `approve_release` waits between `optimize_model` and
`push_model` for a reviewer to approve or reject the model (with a reason) in the Airflow UI.
Every champion change and decision is in `tfpipe history {model_name}`.

A bad champion is undone with the `rollback_model` DAG (or `tfpipe rollback {model_name}`).

Trigger with a config to override the training knobs, the data source or the gate
threshold (see the form). Config file: `dags/pipelines/{name}.yaml`.
"""

from __future__ import annotations

import os

import shlex
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from dags.airflow_support import DEFAULT_ARGS, model_asset, run_context, safe_dag_id, tfpipe_step
from tasks.errors import UserError
from tasks.steps import STEP_TABLE as _STEP_TABLE
from tasks.settings import Settings

# Where the pipeline files are: TFPIPE_PIPELINES_DIR (default: dags/pipelines), bound here at the edge.
PIPELINES = Settings.from_env().pipelines_dir

# The step table (tasks/pipeline.py) gives each task its inputs, timeout and retries.
STEP_TABLE = {step.name: step for step in _STEP_TABLE}


def _task_args(name: str) -> dict:
    step = STEP_TABLE[name]
    args = {"execution_timeout": step.timeout, **({"retries": step.retries} if step.retries is not None else {})}
    return {**args, **(_training_placement() if name == "train_model" else {})}


def _training_placement() -> dict:
    """Where training runs, as the deployment (never a trigger) says: ``TFPIPE_TRAIN_QUEUE``, the
    Celery queue of the GPU workers; ``TFPIPE_TRAIN_POD_TEMPLATE``, the KubernetesExecutor's pod
    template for training (GPU requests), a file on the scheduler (docs/production.md)."""
    placement: dict = {}
    if os.environ.get("TFPIPE_TRAIN_QUEUE"):
        placement["queue"] = os.environ["TFPIPE_TRAIN_QUEUE"]
    if os.environ.get("TFPIPE_TRAIN_POD_TEMPLATE"):
        placement["executor_config"] = {"pod_template_file": os.environ["TFPIPE_TRAIN_POD_TEMPLATE"]}
    return placement


def _kubernetes_training(source: str):
    """``train_model`` as the deferrable operator that runs training as a Kubernetes Job."""
    from dags.kubernetes_training import KubernetesTrainModel

    def train_model(examples, validation):
        return KubernetesTrainModel(task_id="train_model", pipeline_file=source, examples=examples,
                                    validation=validation, **_task_args("train_model")).output

    return train_model


def build_dag(pipeline_file: Path):
    """One DAG per pipeline file; ``dag_id`` is the pipeline's name."""
    from tasks.config import load_pipeline
    from tasks.trigger import param_specs
    from tasks.trigger import MAX_SOURCE_LENGTH

    config = load_pipeline(pipeline_file)
    params = {
        p.name: Param(
            p.default,
            type=p.type,
            description=p.description,
            **({"exclusiveMinimum" if p.exclusive_minimum else "minimum": p.minimum} if p.minimum is not None else {}),
            **({"maximum": p.maximum} if p.maximum is not None else {}),
            **({"enum": list(p.choices)} if p.choices else {}),
            **({"maxLength": MAX_SOURCE_LENGTH} if p.type == "string" and not p.choices else {}),
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
        @task(**_task_args("ingest_examples"))
        @tfpipe_step
        def ingest_examples(params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.run_step("ingest_examples", run_context(source, params, run_id, ds, ti))

        @task(**_task_args("validate_examples"))
        @tfpipe_step
        def validate_examples(examples, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.run_step("validate_examples", run_context(source, params, run_id, ds, ti), examples)

        @task(**_task_args("train_model"))
        @tfpipe_step
        def train_model(examples, validation, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.run_step("train_model", run_context(source, params, run_id, ds, ti), examples, validation)

        @task.short_circuit(**_task_args("evaluate_model"))
        @tfpipe_step
        def evaluate_model(examples, model, params=None, run_id=None, ds=None, ti=None):
            """Returns the blessing when blessed; None (skip optimize and push) otherwise."""
            from tasks import pipeline as steps

            return steps.gate(steps.run_step("evaluate_model", run_context(source, params, run_id, ds, ti), examples, model))

        @task(**_task_args("optimize_model"))
        @tfpipe_step
        def optimize_model(examples, model, blessing, params=None, run_id=None, ds=None, ti=None):
            from tasks import pipeline as steps

            return steps.run_step("optimize_model", run_context(source, params, run_id, ds, ti), examples, model, blessing)

        @task(**_task_args("push_model"), outlets=[asset])
        @tfpipe_step
        def push_model(examples, model, blessing, optimized, params=None, run_id=None, ds=None, ti=None,
                       outlet_events=None):
            """Updates the model's Asset (the serving_check DAG runs on it) with what was pushed."""
            from tasks import pipeline as steps

            pushed = steps.run_step("push_model", run_context(source, params, run_id, ds, ti), examples, model, blessing,
                                    optimized)
            keys = ("model_name", "version", "uri", "champion", "registry_version", "pushed")
            outlet_events[asset].extra = {key: pushed[key] for key in keys if key in pushed}
            return pushed

        tasks = {"ingest_examples": ingest_examples, "validate_examples": validate_examples, "train_model": train_model,
                 "evaluate_model": evaluate_model, "optimize_model": optimize_model, "push_model": push_model}
        if config.train.runner == "kubernetes":  # submits the training Job, then defers until it ends
            tasks["train_model"] = _kubernetes_training(source)
        outputs: dict = {}
        for step in STEP_TABLE.values():  # wired as the step table says: each task's inputs, in order
            outputs[step.name] = tasks[step.name](*(outputs[name] for name in step.inputs))
        if config.push.approval == "required":  # a reviewer decides between optimize and push
            from dags.approval import ReleaseApproval

            approval = ReleaseApproval(pipeline_file=source, model_name=config.model_name,
                                       timeout_hours=config.push.approval_timeout_hours)
            outputs["optimize_model"] >> approval >> outputs["push_model"]

    return pipeline()


BROKEN_DOC = """
### Broken pipeline config: `{file}`

This DAG stands in for the pipeline `{file}` would define: the file cannot be used, so
nothing of the pipeline runs until it is fixed. A run of this DAG fails at once with the error.

```
{error}
```

Fix the file, then check it with `.venv/bin/tfpipe check {path}`; the pipeline's own DAG
replaces this one at the next parse.
"""


def _broken_description(pipeline_file: Path, message: str) -> str:
    """One line for the DAG list: the file and what is wrong with it (the keys, without the
    heading line that repeats the file's path)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    details = "; ".join(lines[1:] if len(lines) > 1 else lines)
    return f"Broken pipeline config {pipeline_file.name}: {details}"[:1000]


def build_broken_dag(pipeline_file: Path, error: Exception):
    """A placeholder DAG, named after a pipeline file that cannot be built, that shows why.

    Airflow reports import errors per Python file, and this one file makes every pipeline's DAG:
    raising here would hide them all. So a broken file gets a DAG of its own (tag
    ``broken-config``) that the DAG list shows beside the good pipelines, whose description
    and docs hold the error (it names the file and the key), and whose only task fails at once
    with it.
    """
    message = str(error) if isinstance(error, UserError) else f"{pipeline_file}: {type(error).__name__}: {error}"

    @dag(
        dag_id=safe_dag_id(pipeline_file.stem),
        description=_broken_description(pipeline_file, message),
        doc_md=BROKEN_DOC.format(file=pipeline_file.name, error=message, path=shlex.quote(str(pipeline_file))),
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        default_args={**DEFAULT_ARGS, "retries": 0},
        tags=["tfpipe", "broken-config"],
    )
    def broken_config():
        @task(execution_timeout=timedelta(minutes=1))
        def report_config_error():
            raise AirflowFailException(message)

        report_config_error()

    return broken_config()


def build_dags(pipelines: Path) -> dict[str, object]:
    """One DAG per pipeline file in ``pipelines``, keyed ``dag_<file stem>``: the pipeline's DAG,
    or for a file that cannot be built, its placeholder (see :func:`build_broken_dag`)."""
    dags = {}
    for pipeline_file in sorted(pipelines.glob("*.yaml")):
        try:
            dags[f"dag_{pipeline_file.stem}"] = build_dag(pipeline_file)
        except Exception as error:  # noqa: BLE001 - one file's failure must not hide the other pipelines
            dags[f"dag_{pipeline_file.stem}"] = build_broken_dag(pipeline_file, error)
    return dags


globals().update(build_dags(PIPELINES))
