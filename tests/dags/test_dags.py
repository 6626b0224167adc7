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
# With the production extra, Airflow itself loads the Amazon provider's S3 asset handler (and so
# boto3) when a DAG declares an asset; that is Airflow's import, not one of tfpipe's.
if "airflow.providers.amazon.aws.assets.s3" in sys.modules:
    heavy.remove("boto3")
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
    # The form's bounds are the config model's (tasks/config.py), so the two cannot disagree.
    assert params.get_param("epochs").schema == {"type": "integer", "minimum": 1, "maximum": 10_000}
    assert params.get_param("batch_size").schema["maximum"] == 65_536
    assert params.get_param("learning_rate").schema["exclusiveMinimum"] == 0
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


def test_serving_check_and_rollback_start_unpaused_and_pipelines_paused(dag, rollback_dag):
    from airflow.dag_processing.dagbag import DagBag

    check = DagBag(dag_folder=str(DAGS)).dags["serving_check"]
    assert check.is_paused_upon_creation is False  # a paused serving_check would miss pushes
    assert rollback_dag.is_paused_upon_creation is False
    assert dag.is_paused_upon_creation is None  # Airflow's default: a new pipeline waits to be unpaused


def _dags_copy(root: Path, pipelines: dict[str, str]) -> Path:
    """The project's DAG files with only ``pipelines`` ({file name: YAML text}) beside them."""
    folder = root / "dags"
    (folder / "pipelines").mkdir(parents=True)
    for source in DAGS.glob("*.py"):
        (folder / source.name).write_text(source.read_text())
    for name, text in pipelines.items():
        (folder / "pipelines" / name).write_text(text)
    return folder


BROKEN_YAML = ("label: species\ntask: multiclass\ndata: {source: package://palmerpenguins/data/penguins.csv}\n"
               "train: {epoks: 3}\n")


def test_a_broken_pipeline_config_is_shown_as_its_own_dag_and_hides_no_other(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    folder = _dags_copy(tmp_path, {"penguins.yaml": (DAGS / "pipelines" / "penguins.yaml").read_text(),
                                   "churn v2.yaml": BROKEN_YAML})
    monkeypatch.setenv("TFPIPE_PIPELINES_DIR", str(folder / "pipelines"))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    assert {"penguins", "churn_v2", "serving_check", "rollback_model"} <= set(bag.dags)
    assert list(bag.dags["penguins"].task_dict)[0] == "ingest_examples"  # the good pipeline is whole
    broken = bag.dags["churn_v2"]
    assert "broken-config" in broken.tags and list(broken.task_dict) == ["report_config_error"]
    for text in (broken.description, broken.doc_md):
        assert "churn v2.yaml" in text and "train.epoks: unknown key" in text
    assert broken.task_dict["report_config_error"].retries == 0


def test_training_on_kubernetes_is_a_deferrable_task_in_the_same_graph(tmp_path, monkeypatch):
    """``train.runner: kubernetes``: train_model submits the Job and defers (dags/kubernetes_training.py),
    with the step table's retries and timeout, between the same tasks."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from dags.kubernetes_training import KubernetesTrainModel

    config = yaml.safe_load((DAGS / "pipelines" / "penguins.yaml").read_text())
    config["train"] = {**config.get("train", {}), "runner": "kubernetes", "strategy": "multi_worker", "workers": 4}
    folder = _dags_copy(tmp_path, {"kube.yaml": yaml.safe_dump(config)})
    monkeypatch.setenv("TFPIPE_PIPELINES_DIR", str(folder / "pipelines"))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    dag = bag.dags["kube"]
    train = dag.task_dict["train_model"]
    assert type(train).__name__ == KubernetesTrainModel.__name__ and hasattr(train, "execute_complete")
    assert train.upstream_task_ids == {"ingest_examples", "validate_examples"}
    assert {"evaluate_model", "optimize_model", "push_model"} <= train.downstream_task_ids
    assert train.retries >= 1 and train.execution_timeout is not None
    assert set(train.template_fields) == {"examples", "validation"}


FAILURE_SCRIPT = r"""
import json, os, sys
from datetime import timedelta

from airflow.dag_processing.dagbag import DagBag
from airflow.utils import db

db.initdb()
bag = DagBag(dag_folder=sys.argv[1])

def outcome(dag_id, task_id):
    (ti,) = [t for t in bag.dags[dag_id].test().get_task_instances() if t.task_id == task_id]
    return {"state": str(getattr(ti.state, "value", ti.state)), "tries": ti.try_number}

result = {"broken": outcome("broken", "report_config_error")}
os.environ["TFPIPE_HOME"] = sys.argv[2]
result["user_error"] = outcome("nosource", "ingest_examples")  # retries=2 as configured
for task in bag.dags["nosource"].tasks:  # a retry at once, so that the test does not wait 30 s
    task.retries, task.retry_delay, task.retry_exponential_backoff = 1, timedelta(0), False
os.environ["TFPIPE_HOME"] = sys.argv[3]
result["other_error"] = outcome("nosource", "ingest_examples")
print(json.dumps(result))
"""


def test_a_user_error_fails_its_task_at_once_while_other_errors_are_retried(tmp_path):
    """Through dag.test(): a source file that does not exist (a DataError) fails ingest_examples on
    its first try; a TFPIPE_HOME that cannot be created (an OSError, the environment's fault) is retried."""
    missing = tmp_path / "missing.csv"
    folder = _dags_copy(tmp_path, {
        "nosource.yaml": f"label: species\ntask: multiclass\ndata: {{source: {missing}}}\n",
        "broken.yaml": BROKEN_YAML,
    })
    (tmp_path / "a_file").write_text("")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(folder), "TFPIPE_PIPELINES_DIR": str(folder / "pipelines")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", FAILURE_SCRIPT, str(folder), str(tmp_path / "home"),
                           str(tmp_path / "a_file" / "home")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    log = proc.stdout + proc.stderr
    assert result["user_error"] == {"state": "failed", "tries": 1}
    assert f"AirflowFailException: data source {missing}: no such file" in log
    assert result["other_error"] == {"state": "failed", "tries": 2}
    assert "NotADirectoryError" in log
    assert result["broken"] == {"state": "failed", "tries": 1}
    assert "AirflowFailException: invalid pipeline config" in log and "train.epoks: unknown key" in log


def test_the_step_wrapper_keeps_the_task_signature_and_other_errors():
    import inspect

    from airflow.sdk.exceptions import AirflowFailException

    from dags.airflow_support import tfpipe_step
    from tasks.config import ConfigError

    @tfpipe_step
    def step(examples, params=None, ti=None):
        raise examples

    assert step.__name__ == "step" and list(inspect.signature(step).parameters) == ["examples", "params", "ti"]
    with pytest.raises(AirflowFailException, match=r"^train\.epoks: unknown key$") as failed:
        step(ConfigError("train.epoks: unknown key"))
    assert isinstance(failed.value.__cause__, ConfigError)
    with pytest.raises(RuntimeError, match="S3 is down"):
        step(RuntimeError("S3 is down"))


def test_stderr_lines_are_logged_at_the_severity_they_state(caplog):
    """What C++ libraries write on descriptor 2 (which Airflow would log as errors), line by line."""
    import logging

    from dags.airflow_support import stderr_at_its_own_level

    lines = [
        (logging.ERROR, "2026-12-01 14:58:56.756193: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:479] x"),
        (logging.WARNING, "W0000 00:00:1796137146.497631   16307 tf_tfl_flatbuffer_helpers.cc:390] Ignored x."),
        (logging.INFO, "I1201 14:58:56.123456 16307 a.cc:1] an info line"),
        (logging.INFO, "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."),
        (logging.WARNING, "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"),
        (logging.WARNING, "fully_quantize: 0, inference_type: 6"),  # no severity: a diagnostic
    ]
    before = os.fstat(2)
    with caplog.at_level(logging.DEBUG, logger="stderr"), stderr_at_its_own_level(poll_seconds=0.01):
        for _, line in lines:
            os.write(2, (line + "\n").encode())
        os.write(2, b"CRITICAL: the last line, without a line break")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        *(("stderr", level, line) for level, line in lines),
        ("stderr", logging.CRITICAL, "CRITICAL: the last line, without a line break")]
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (before.st_ino, before.st_dev)  # restored


def test_mlflow_logs_through_the_root_logger_at_its_own_level():
    import logging

    from tasks.tracking import MLFLOW_LOGGERS, log_through_root_logger

    log_through_root_logger()
    mlflow_logger = logging.getLogger("mlflow")
    assert mlflow_logger.getEffectiveLevel() == logging.INFO
    for name in MLFLOW_LOGGERS:
        assert logging.getLogger(name).handlers == [] and logging.getLogger(name).propagate, name


def test_training_goes_where_the_deployment_says(tmp_path, monkeypatch):
    """TFPIPE_TRAIN_QUEUE (Celery's GPU workers) and TFPIPE_TRAIN_POD_TEMPLATE (the
    KubernetesExecutor's GPU pod) place train_model only; unset, nothing is placed."""
    from airflow.dag_processing.dagbag import DagBag

    template = REPO / "docker" / "kubernetes" / "gpu-pod-template.yaml"
    monkeypatch.setenv("TFPIPE_TRAIN_QUEUE", "gpu")
    monkeypatch.setenv("TFPIPE_TRAIN_POD_TEMPLATE", str(template))
    placed = DagBag(dag_folder=str(DAGS)).dags["penguins"].task_dict
    assert placed["train_model"].queue == "gpu"
    assert placed["train_model"].executor_config == {"pod_template_file": str(template)}
    assert placed["ingest_examples"].queue != "gpu" and not placed["ingest_examples"].executor_config
    monkeypatch.delenv("TFPIPE_TRAIN_QUEUE")
    monkeypatch.delenv("TFPIPE_TRAIN_POD_TEMPLATE")
    plain = DagBag(dag_folder=str(DAGS)).dags["penguins"].task_dict["train_model"]
    assert plain.queue != "gpu" and not plain.executor_config


def test_a_pipeline_that_requires_approval_asks_a_reviewer_between_optimize_and_push(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    penguins = (DAGS / "pipelines" / "penguins.yaml").read_text()
    gated = penguins.replace("model_name: penguins", "model_name: gated") + \
        "push: {approval: required, approval_timeout_hours: 2}\n"
    assert "model_name: gated" in gated
    folder = _dags_copy(tmp_path, {"penguins.yaml": penguins, "gated.yaml": gated})
    monkeypatch.setenv("TFPIPE_PIPELINES_DIR", str(folder / "pipelines"))
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    tasks = bag.dags["gated"].task_dict
    approval = tasks["approve_release"]
    assert isinstance(approval, ApprovalOperator) and approval.options == ["Approve", "Reject"]
    assert approval.upstream_task_ids == {"optimize_model"} and "approve_release" in tasks["push_model"].upstream_task_ids
    assert approval.defaults == ["Reject"] and approval.response_timeout.total_seconds() == 2 * 3600
    assert set(approval.params) == {"reason"}
    assert "approve_release" not in bag.dags["penguins"].task_dict  # without the key nothing changes
