"""The whole penguins DAG through Airflow's dag.test(), against real services on 127.0.0.1:
S3 (moto server) as artifact root and model store, and an `mlflow server` subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.servers import mlflow_server, moto_s3

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUCKET = "tfpipe-it"
STEPS = ["ingest_examples", "validate_examples", "train_model", "evaluate_model", "optimize_model", "push_model"]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("it")
    saved = dict(os.environ)
    with moto_s3() as endpoint, mlflow_server(root / "mlflow") as tracking_uri:
        os.environ.update({
            "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": tracking_uri,
            "TFPIPE_HOME": str(root / "home"),
            "TFPIPE_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
            "TFPIPE_MODEL_STORE": f"s3://{BUCKET}/model_store",
            "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080", "TFPIPE_MLFLOW_UI_URL": "http://127.0.0.1:5000",
        })
        import boto3

        from tasks import storage

        storage.reset_clients()
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       capture_output=True, timeout=600)
        try:
            yield {"root": root, "tracking_uri": tracking_uri}
        finally:
            os.environ.clear()
            os.environ.update(saved)
            storage.reset_clients()


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["penguins"]
    for task in dag.tasks:  # dag.test() would sleep through retry delays on a failure
        task.retries = 0
    return dag


def _states(dag_run):
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}


def _client(services):
    from mlflow import MlflowClient

    return MlflowClient(services["tracking_uri"])


def _children(client, run_id):
    experiment = client.get_experiment_by_name("penguins")
    parent = client.search_runs([experiment.experiment_id],
                                f"tags.`tfpipe.role` = 'pipeline' and tags.`tfpipe.run_id` = '{run_id}'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, {c.data.tags["airflow.task_id"]: c for c in children}


def _artifacts(client, run_id, path=None):
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(_artifacts(client, run_id, item.path) if item.is_dir else [item.path])
    return found


@pytest.fixture(scope="module")
def blessed_run(services, dag):
    dag_run = dag.test(run_conf={"epochs": 30})
    return dag_run


def test_every_task_succeeds(blessed_run):
    assert str(getattr(blessed_run.state, "value", blessed_run.state)) == "success"
    assert _states(blessed_run) == {step: "success" for step in STEPS}


def test_pushed_model_is_in_s3_and_serves(services, blessed_run):
    import tensorflow as tf

    from tasks import storage
    from tasks.evaluate import eval_data
    from tasks.ingest import read_manifest
    from tasks.training.export import read_model_spec

    assert storage.exists(f"s3://{BUCKET}/model_store/penguins/1/saved_model.pb")
    local = storage.materialize(f"s3://{BUCKET}/model_store/penguins/1", services["root"] / "download")
    serve = tf.saved_model.load(str(local)).signatures["serving_default"]
    run_root = f"s3://{BUCKET}/artifacts/penguins/runs"
    run_dir = storage.list_dir(run_root)[0]
    examples_uri = f"{run_root}/{run_dir}/examples"
    assert read_manifest(examples_uri)["splits"]["eval"]["count"] > 0
    # Training mirrored its checkpoints beside the run (a retry elsewhere resumes) and removed them once published.
    assert "model" in storage.list_dir(f"{run_root}/{run_dir}")
    assert "checkpoints" not in storage.list_dir(f"{run_root}/{run_dir}")
    # What re-running the DAG run needs, with the conf that triggers it again.
    rerun = json.loads(storage.read_bytes(f"{run_root}/{run_dir}/rerun.json"))
    assert rerun["orchestrator"] == "airflow" and rerun["dag_id"] == "penguins" and rerun["data"][0]["sha256"]
    assert rerun["conf"]["epochs"] == rerun["config"]["train"]["epochs"]
    records, labels = eval_data(examples_uri, read_model_spec(f"{run_root}/{run_dir}/model"), services["root"] / "c")
    predicted = serve(examples=tf.constant(records))["predicted_class"].numpy().astype(str)
    assert (predicted == labels).mean() > 0.85
    # What TF Serving needs: warm-up requests in the version, the champion in models.config.
    from tasks.release.model_store import read_champion, read_manifest
    from tasks.release.models_config import parse_models_config
    from tasks.release.serving import WARMUP_FILE, read_warmup_requests

    assert len(read_warmup_requests(local / WARMUP_FILE)) == 16
    assert "saved_model.pb" in read_manifest(f"s3://{BUCKET}/model_store/penguins/1")["files"]
    assert read_champion(f"s3://{BUCKET}/model_store", "penguins")["version"] == 1
    config = storage.read_bytes(f"s3://{BUCKET}/model_store/models.config").decode()
    assert parse_models_config(config) == {"penguins": ("/models/penguins", [1])}


def test_mlflow_run_tree_holds_every_artifact(services, blessed_run):
    client = _client(services)
    parent, children = _children(client, blessed_run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["airflow.dag_id"] == "penguins"
    assert set(children) == set(STEPS)
    assert all(c.info.status == "FINISHED" for c in children.values())
    expected = {
        "ingest_examples": ["examples/manifest.json"],
        "validate_examples": ["statistics/schema.pbtxt", "statistics/train/FeatureStats.pb",
                              "statistics/train/statistics.html", "statistics/train/overview.html",
                              "anomalies/report.txt"],
        "train_model": ["plots/training_curves.png", "model/model_spec.json", "model/history.json"],
        "evaluate_model": ["evaluation/blessing.json", "plots/confusion_matrix.png", "plots/roc_pr_curves.png"],
        "optimize_model": ["optimization/report.json", "plots/tradeoff.png"],
        "push_model": ["push/pushed_model.json"],
    }
    # Checkpoints were mirrored to S3 while training ran (see the S3 test for their removal).
    train_tags = children["train_model"].data.tags
    assert train_tags["tfpipe.checkpoint_mirror"].startswith(f"s3://{BUCKET}/artifacts/penguins/runs/")
    assert int(train_tags["tfpipe.checkpoint_files_mirrored"]) > 0
    for step, paths in expected.items():
        listed = _artifacts(client, children[step].info.run_id)
        for path in paths:
            assert path in listed, (step, path, listed)
    assert children["evaluate_model"].data.metrics["accuracy"] > 0.85
    train_run = children["train_model"].info.run_id
    epochs = client.get_metric_history(train_run, "loss")  # early stopping may end before 30
    assert 10 <= len(epochs) <= 30 and sorted(m.step for m in epochs) == list(range(1, len(epochs) + 1))
    steps = client.get_metric_history(train_run, "step_loss")  # every step, logged in batches
    assert len(steps) == max(m.step for m in steps) >= len(epochs)
    push = children["push_model"]
    assert push.data.params["pushed_uri"] == f"s3://{BUCKET}/model_store/penguins/1"
    champion = client.get_model_version_by_alias("penguins", "champion")
    assert champion.tags["store_uri"] == f"s3://{BUCKET}/model_store/penguins/1"
    assert champion.tags["store_version"] == "1"
    # The registry version is train_model's MLflow model: it loads with its signature.
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model("models:/penguins@champion")
    assert {"predicted_class", "scores"} <= {o["name"] for o in loaded.metadata.get_output_schema().to_dict()}


def test_airflow_and_mlflow_link_to_each_other(services, blessed_run):
    """Each task links to its MLflow run and experiment (plugin extra links, read from the metadata
    DB as the API server does); each MLflow run links back to its DAG run and task instance; the
    listener recorded the DAG run's end on the parent run."""
    from plugins.tfpipe_plugin import MlflowExperimentLink, MlflowRunLink

    client = _client(services)
    parent, children = _children(client, blessed_run.run_id)
    experiment_id = parent.info.experiment_id
    dag_run_url = f"http://127.0.0.1:8080/dags/penguins/runs/{quote(blessed_run.run_id, safe='')}"
    assert parent.data.tags["airflow.dag_run_url"] == dag_run_url
    assert parent.data.tags["airflow.dag_run_state"] == "success"
    for ti in blessed_run.get_task_instances():
        child = children[ti.task_id]
        run_link = MlflowRunLink().get_link(None, ti_key=ti.key)
        view = "?workflowType=machine_learning"  # the UI's model-training view, not its GenAI pages
        assert run_link == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{child.info.run_id}{view}"
        assert (MlflowExperimentLink().get_link(None, ti_key=ti.key)
                == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs{view}")
        assert child.data.tags["airflow.task_instance_url"] == f"{dag_run_url}/tasks/{ti.task_id}"
        assert f"]({dag_run_url}/tasks/{ti.task_id})" in child.data.tags["mlflow.note.content"]


def test_the_plugin_is_registered_with_airflow(services):
    out = subprocess.run([str(Path(sys.executable).parent / "airflow"), "plugins", "--output", "json"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    (plugin,) = [p for p in json.loads(out) if p["name"] == "tfpipe"]
    assert "MlflowRunLink" in str(plugin["global_operator_extra_links"])
    assert "tfpipe_listener" in str(plugin["listeners"])
    assert "http://127.0.0.1:5000" in str(plugin["external_views"])


def test_push_updates_the_model_asset_and_the_serving_check_passes(services, blessed_run):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                                 .where(AssetModel.name == "penguins_model")
                                 .where(AssetEvent.source_run_id == blessed_run.run_id)).all()
        extras = [dict(e.extra) for e in events]
    assert extras == [{"model_name": "penguins", "version": 1, "uri": f"s3://{BUCKET}/model_store/penguins/1",
                       "champion": 1, "registry_version": "1", "pushed": True}]
    check = _fresh_dag("serving_check").test()
    assert _states(check) == {"check_serving": "success"}
    client = _client(services)
    runs = client.search_runs([client.get_experiment_by_name("penguins").experiment_id],
                              "tags.`tfpipe.role` = 'serving_check'")
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["tfpipe.checked_version"] == "1"


def test_trained_model_is_an_mlflow_model_with_signature_and_input_example(services, blessed_run, penguins_frame):
    import mlflow.artifacts
    import mlflow.pyfunc

    client = _client(services)
    _, children = _children(client, blessed_run.run_id)
    # The run's output is an MLflow 3 logged model, whose artifacts are the pyfunc model.
    (output,) = client.get_run(children["train_model"].info.run_id).outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    from mlflow.entities import LoggedModelStatus

    assert logged.status == LoggedModelStatus.READY
    local = mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location,
                                                tracking_uri=services["tracking_uri"])
    assert (Path(local) / "artifacts" / "saved_model" / "saved_model.pb").is_file()
    model = mlflow.pyfunc.load_model(local)
    inputs = {spec["name"]: spec["type"] for spec in model.metadata.get_input_schema().to_dict()}
    assert inputs == {"island": "string", "bill_length_mm": "double", "bill_depth_mm": "double",
                      "flipper_length_mm": "double", "body_mass_g": "double", "sex": "string", "year": "double"}
    outputs = {spec["name"] for spec in model.metadata.get_output_schema().to_dict()}
    assert {"predicted_class", "scores"} <= outputs
    rows = penguins_frame.drop(columns="species").head(40)  # with missing values (rows 3 and 8)
    numeric = [name for name, kind in inputs.items() if kind == "double"]
    rows = rows.astype({name: "float64" for name in numeric})  # the signature's types: numbers are double
    predicted = model.predict(rows)
    accuracy = (predicted["predicted_class"] == penguins_frame["species"].head(40)).mean()
    assert len(predicted) == 40 and accuracy > 0.85


def test_unmet_threshold_pushes_nothing(services, dag, blessed_run):
    from tasks import storage
    from tasks.release.model_store import versions

    before = storage.list_files(f"s3://{BUCKET}/model_store/penguins/1")
    dag_run = dag.test(run_conf={"epochs": 1, "learning_rate": 1e-6, "accuracy_threshold": 0.99})
    states = _states(dag_run)
    assert states["evaluate_model"] == "success"
    assert states["optimize_model"] == states["push_model"] == "skipped"
    assert versions(os.environ["TFPIPE_MODEL_STORE"], "penguins") == [1]
    assert storage.list_files(f"s3://{BUCKET}/model_store/penguins/1") == before
    parent, children = _children(_client(services), dag_run.run_id)
    assert children["evaluate_model"].data.tags["tfpipe.blessed"] == "false"
    assert parent.data.tags["tfpipe.outcome"] == "not_blessed"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["airflow.dag_run_state"] == "success"


def _fresh_dag(dag_id):
    """A DAG object of its own: dag.test() keeps a run's conf in the DAG's params."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).dags[dag_id]
    for task in dag.tasks:
        task.retries = 0
    return dag


def test_a_failed_dag_run_ends_its_mlflow_run_failed(services, monkeypatch):
    monkeypatch.setenv("TFPIPE_ARTIFACT_ROOT", "s3://no-such-bucket/artifacts")  # ingest cannot publish
    dag_run = _fresh_dag("penguins").test()
    assert str(getattr(dag_run.state, "value", dag_run.state)) == "failed"
    parent, children = _children(_client(services), dag_run.run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["airflow.dag_run_state"] == "failed"
    assert children["ingest_examples"].info.status == "FAILED"


def test_a_hostile_trigger_conf_is_refused_before_anything_runs(services, tmp_path):
    """A template payload, a file outside the pipeline's sources, a looser gate: each fails the first
    task at once (no retry), executes nothing and opens no MLflow run."""
    from airflow.sdk.exceptions import ParamValidationError

    marker = tmp_path / "pwned"
    payload = "{{ lipsum.__globals__['os'].popen('touch " + str(marker) + "').read() }}"
    client = _client(services)
    for conf, message in (({"data_source": payload}, "no other template syntax is allowed"),
                          ({"data_source": "/etc/passwd"}, "is not among the sources pipeline 'penguins' allows")):
        dag_run = _fresh_dag("penguins").test(run_conf=conf)
        states = _states(dag_run)
        assert states["ingest_examples"] == "failed" and states["train_model"] == "upstream_failed", states
        (ingest,) = [ti for ti in dag_run.get_task_instances() if ti.task_id == "ingest_examples"]
        assert ingest.try_number == 1
        experiment = client.get_experiment_by_name("penguins")
        assert not client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'")
        assert message  # the error is in the task log (Airflow); the unit tests check each message
    assert not marker.exists()
    with pytest.raises(ParamValidationError):  # the form's own bound: the gate only gets stricter
        _fresh_dag("penguins").test(run_conf={"accuracy_threshold": 0.1})


def test_conf_violating_a_param_bound_is_rejected(services, dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        dag.test(run_conf={"epochs": 100000})


def test_s3_credentials_from_the_aws_default_connection(services, dag, blessed_run):
    """With no AWS variables set, tasks bind the Airflow connection `aws_default` instead."""
    import json

    from tasks import storage

    saved = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps({
        "conn_type": "aws", "login": saved["AWS_ACCESS_KEY_ID"], "password": saved["AWS_SECRET_ACCESS_KEY"],
        "extra": {"endpoint_url": saved["AWS_ENDPOINT_URL"], "region_name": "us-east-1"},
    })
    storage.reset_clients()
    try:
        dag_run = dag.test(run_conf={"epochs": 2})
        states = _states(dag_run)
        assert states["ingest_examples"] == states["validate_examples"] == states["evaluate_model"] == "success"
        assert os.environ["AWS_ENDPOINT_URL"] == saved["AWS_ENDPOINT_URL"]
    finally:
        os.environ.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
        os.environ.update(saved)
        storage.reset_clients()


def test_rollback_dag_moves_the_champion_back(services, dag, blessed_run):
    """A second push (tfpipe run, gate relaxed so that it blesses) becomes champion; the
    rollback_model DAG returns to v1."""
    from tasks import storage
    from tasks.release.model_store import read_champion
    from tasks.release.models_config import parse_models_config
    from tasks.context import make_context
    from tasks.pipeline import run_pipeline
    from tasks.settings import Settings

    store = os.environ["TFPIPE_MODEL_STORE"]
    ctx = make_context("penguins", run_id="second-push", settings=Settings.from_env(),
                       overrides={"train.epochs": 10, "gate.metrics.accuracy.max_decrease": 1.0})
    pushed = run_pipeline(ctx)["push_model"]
    newest = read_champion(store, "penguins")["version"]
    assert newest == pushed["version"] == pushed["champion"]
    assert newest > 1
    dag_run = _fresh_dag("rollback_model").test(run_conf={"model": "penguins", "to_version": 1})
    assert _states(dag_run) == {"rollback_model": "success"}
    record = read_champion(store, "penguins")
    assert record["version"] == 1 and record["reason"] == "rollback" and record["by"].startswith("airflow:rollback_model/")
    config = storage.read_bytes(f"{store}/models.config").decode()
    assert parse_models_config(config)["penguins"][1] == [1]
    client = _client(services)
    assert client.get_model_version_by_alias("penguins", "champion").tags["store_version"] == "1"
    runs = client.search_runs([client.get_experiment_by_name("penguins").experiment_id],
                              "tags.`tfpipe.role` = 'rollback'")
    assert runs and runs[0].data.params["from_store_version"] == str(newest)
