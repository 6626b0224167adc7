"""The step table: the one list of a pipeline's steps. The DAG builds its tasks and their wiring
from it, ``tfpipe run`` (:func:`tasks.pipeline.run_pipeline`) runs it in order, and the table in
``docs/architecture.md`` is checked against it. Nothing heavy is imported here: the DAG file reads
it at parse time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Step:
    """One step of every pipeline: the DAG's task (its inputs, timeout and retries), what
    ``tfpipe run`` calls, and a row of the step table in ``docs/architecture.md``."""

    name: str
    inputs: tuple[str, ...]  # the earlier steps whose records it takes, in this order
    timeout: timedelta  # the Airflow task's execution_timeout
    does: str
    gates: bool = False  # an unblessed record ends the run (the DAG's short-circuit)
    retries: int | None = None  # None: the DAG's default (DEFAULT_ARGS)
    loads: tuple[str, ...] = ()  # the heavy libraries it uses, loaded once its MLflow run is open (tasks/heap.py)


# Training and evaluation run long on big data; the rest should be quick.
STEP_TABLE = (
    Step("ingest_examples", (), timedelta(hours=2), "CSV/Parquet to TFRecord shards per split",
         loads=("pyarrow",)),
    Step("validate_examples", ("ingest_examples",), timedelta(hours=2),
         "TFDV statistics, schema, anomalies and drift", loads=("tensorflow_data_validation",)),
    Step("train_model", ("ingest_examples", "validate_examples"), timedelta(hours=12),
         "the tf.GradientTape loop under tf.distribute, exported as a SavedModel", loads=("tensorflow",)),
    Step("evaluate_model", ("ingest_examples", "train_model"), timedelta(hours=2),
         "metrics on the eval split and the gate that blesses the model (or not)", gates=True,
         loads=("tensorflow", "sklearn.metrics", "matplotlib")),
    Step("optimize_model", ("ingest_examples", "train_model", "evaluate_model"), timedelta(hours=2),
         "TFLite, pruning and TF-TRT variants, each judged against the original",
         loads=("tensorflow", "tensorflow_model_optimization", "matplotlib")),
    Step("push_model", ("ingest_examples", "train_model", "evaluate_model", "optimize_model"),
         timedelta(minutes=30), "the blessed version into the model store, promoted and registered", retries=1,
         loads=("tensorflow",)),
)
STEPS = tuple(step.name for step in STEP_TABLE)


def step_named(name: str) -> Step | None:
    """The step table's row of ``name``; None for a name that is not a step."""
    return next((step for step in STEP_TABLE if step.name == name), None)
