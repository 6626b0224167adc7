"""DAG hygiene (Airflow's test_example_dags pattern) and the pipeline DAG's structure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

PARSE_SCRIPT = r"""
import json, sys
from airflow.sdk import BaseHook, Connection

lookups = []
def refuse(*args, **kwargs):
    lookups.append(args)
    raise RuntimeError("connection looked up while parsing")
Connection.get = classmethod(refuse)
BaseHook.get_connection = classmethod(refuse)

from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
heavy = [m for m in ("tensorflow", "tensorflow_data_validation", "mlflow", "boto3", "apache_beam") if m in sys.modules]
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                  "heavy": heavy, "lookups": len(lookups)}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow_home")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(DAGS)], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dag(tmp_path_factory):
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS)).dags["penguins"]


def test_dags_import_without_errors(parsed):
    assert parsed["errors"] == {}
    assert parsed["dags"] == sorted([*(p.stem for p in (DAGS / "pipelines").glob("*.yaml")), "rollback_model",
                                     "serving_check"])


def test_parsing_imports_nothing_heavy_and_looks_up_no_connection(parsed):
    assert parsed["heavy"] == []
    assert parsed["lookups"] == 0


def test_graph_is_the_pipeline(dag):
    assert {tid: sorted(t.downstream_task_ids) for tid, t in dag.task_dict.items()} == {
        "ingest_examples": ["evaluate_model", "optimize_model", "push_model", "train_model", "validate_examples"],
        "validate_examples": ["train_model"],
        "train_model": ["evaluate_model", "optimize_model", "push_model"],
        "evaluate_model": ["optimize_model", "push_model"],
        "optimize_model": ["push_model"],
        "push_model": [],
    }


def test_push_is_gated_by_the_evaluation_short_circuit(dag):
    from airflow.providers.standard.operators.python import ShortCircuitOperator

    gate = dag.task_dict["evaluate_model"]
    assert isinstance(gate, ShortCircuitOperator)
    assert "evaluate_model" in dag.task_dict["push_model"].upstream_task_ids
    assert "evaluate_model" in dag.task_dict["optimize_model"].upstream_task_ids


def test_schedule_tags_retries_and_timeouts(dag):
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert "tfpipe" in dag.tags
    assert dag.doc_md and "ingest_examples" in dag.doc_md
    for task in dag.tasks:
        assert task.retries >= 1, task.task_id
        assert task.execution_timeout is not None, task.task_id


def test_trigger_form_params_are_typed_bounded_and_described(dag):
    params = dag.params
    for name in ("epochs", "batch_size", "learning_rate", "strategy", "accuracy_threshold", "data_source"):
        param = params.get_param(name)
        assert param.description, name
        assert "type" in param.schema, name
    assert params.get_param("epochs").schema == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert params.get_param("accuracy_threshold").schema["maximum"] == 1.0
    strategy = params.get_param("strategy")
    assert strategy.schema == {"type": "string", "enum": ["auto", "one_device", "mirrored", "multi_worker",
                                                         "parameter_server"]}
    assert strategy.value == "auto" and "multi_worker" in strategy.description


@pytest.fixture(scope="module")
def rollback_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS)).dags["rollback_model"]


def test_rollback_dag_is_manual_with_a_model_choice_and_an_optional_version(rollback_dag):
    assert rollback_dag.schedule is None
    assert list(rollback_dag.task_dict) == ["rollback_model"]
    assert "release" in rollback_dag.tags and "champion" in rollback_dag.doc_md
    model = rollback_dag.params.get_param("model")
    assert model.schema["enum"] == ["penguins"] and model.description
    version = rollback_dag.params.get_param("to_version")
    assert version.schema == {"type": ["null", "integer"], "minimum": 1}
    assert version.value is None and version.description
    task = rollback_dag.task_dict["rollback_model"]
    assert task.retries >= 1 and task.execution_timeout is not None


def test_push_updates_the_model_asset_that_schedules_the_serving_check(dag):
    from airflow.dag_processing.dagbag import DagBag

    push = dag.task_dict["push_model"]
    assert [(a.name, a.uri) for a in push.outlets] == [("penguins_model", "tfpipe://models/penguins")]
    check = DagBag(dag_folder=str(DAGS)).dags["serving_check"]
    condition = check.timetable.asset_condition  # any model's push triggers it
    assert type(condition).__name__ == "AssetAny"
    assert [(a.name, a.uri) for a in condition.objects] == [("penguins_model", "tfpipe://models/penguins")]
    assert list(check.task_dict) == ["check_serving"] and "release" in check.tags
