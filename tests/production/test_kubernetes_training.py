"""``train.runner: kubernetes`` end to end, without a cluster on these machines: the training
step submits its Indexed Job and headless Service through the cncf.kubernetes provider's hook,
waits (``tfpipe run`` polls; under Airflow the task defers on the provider's
``KubernetesJobTrigger``), and reads the chief's result, against a Kubernetes API on 127.0.0.1
whose pods are processes with a pod's environment (tests/kube_cluster.py), S3 (moto's server)
as the artifact root. A failed Job is replaced by the next try's, which resumes from the
checkpoint copy on S3."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import write_pipeline
from tests.kube_cluster import kube_cluster, wait_for
from tests.servers import moto_s3

pytestmark = [pytest.mark.production, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
QUICK = {"optimize": {"variants": ["tflite_float32"], "latency_runs": 10, "throughput_batch": 64}}
KUBE = {"runner": "kubernetes", "strategy": "multi_worker", "workers": 2,
        "kubernetes": {"cpu": "1", "memory": "2Gi", "poll_seconds": 1}}


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    from tasks import storage

    with moto_s3() as endpoint:
        secret = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}  # the pods' Secret (envFrom: tfpipe-env)
        for key, value in secret.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket="runs")
        with kube_cluster(tmp_path / "cluster", secret) as (cluster, kubeconfig):
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
                {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig)}}))
            monkeypatch.setenv("TFPIPE_TRAIN_IMAGE", "registry.example/tfpipe-worker:test")
            monkeypatch.setenv("TFPIPE_HOME", str(tmp_path / "home"))
            monkeypatch.setenv("TFPIPE_ARTIFACT_ROOT", "s3://runs/artifacts")
            monkeypatch.setenv("TFPIPE_MODEL_STORE", "s3://runs/store")
            monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
            yield cluster
        storage.reset_clients()


def _jobs(cluster) -> list[str]:
    return [name.split("/")[-1] for name in cluster.created if name.startswith("jobs/")]


def _train_run(settings, pipeline: str):
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(pipeline)
    return client.search_runs([experiment.experiment_id], "tags.`airflow.task_id` = 'train_model'")


def test_tfpipe_run_trains_as_an_indexed_job_of_two_pods_and_pushes(tmp_path, cluster, capsys):
    from tasks.cli import main
    from tasks.release import model_store
    from tasks.settings import Settings

    pipeline = write_pipeline(tmp_path, name="kube", train={"epochs": 2, **KUBE}, **QUICK)
    assert main(["run", str(pipeline), "--run-id", "r1"]) == 0, capsys.readouterr().err
    (job,) = _jobs(cluster)
    assert cluster.created == [f"services/default/{job}", f"jobs/default/{job}"]
    run = cluster.job("default", job)
    assert run.manifest["status"]["conditions"][0]["type"] == "Complete"
    assert [pod.attempts for pod in run.pods] == [1, 1]  # two pods, each its own worker
    (train,) = _train_run(Settings.from_env(), "kube")
    assert train.info.status == "FINISHED" and train.data.tags["tfpipe.workers"] == "2"
    assert train.data.tags["tfpipe.strategy"] == "CollectiveAllReduceStrategy"
    assert "system/worker-1/cpu_utilization_percentage" in train.data.metrics  # the second pod reports too
    assert model_store.versions("s3://runs/store", "kube") == [1]  # pushed


def _first_mirrored_checkpoint(mirror: str, thread, outcome: dict) -> None:
    from tasks import storage

    def mirrored() -> bool:
        assert thread.is_alive(), f"training ended before a checkpoint was mirrored: {outcome}"
        return storage.exists(f"{mirror}/latest/checkpoint")

    wait_for(mirrored, timeout=600, poll=0.2)


def test_a_failed_job_is_replaced_by_the_next_try_which_resumes_from_the_checkpoints(tmp_path, cluster):
    import threading

    from tasks import artifacts
    from tasks.context import make_context
    from tasks.pipeline import run_pipeline, run_step
    from tasks.settings import Settings
    from tasks.training.kubernetes_runner import TrainingJobFailed, job_name

    train = {"epochs": 30, "batch_size_per_replica": 8, "steps_per_execution": 1, "checkpoint_every_steps": 20,
             "early_stopping": {"patience": None}, **KUBE, "kubernetes": {**KUBE["kubernetes"], "backoff_limit": 0}}
    pipeline = write_pipeline(tmp_path, name="kube", train=train, **QUICK)
    settings = Settings.from_env()
    records = run_pipeline(make_context(pipeline, "r2", settings), until="validate_examples")
    inputs = (records["ingest_examples"], records["validate_examples"])
    outcome: dict = {}

    def first_try() -> None:
        try:
            run_step("train_model", make_context(pipeline, "r2", settings, try_number=1), *inputs)
        except Exception as error:  # noqa: BLE001 -- what the try ended with is the subject
            outcome["error"] = error

    thread = threading.Thread(target=first_try)
    thread.start()
    mirror = artifacts.checkpoints_uri(settings.artifact_root, "kube", "r2")
    _first_mirrored_checkpoint(mirror, thread, outcome)
    first = job_name("kube", "r2", 1)
    chief = cluster.job("default", first).pods[0].proc
    os.killpg(chief.pid, signal.SIGKILL)  # the chief's machine is lost; backoffLimit 0: the Job fails
    thread.join(300)
    assert isinstance(outcome.get("error"), TrainingJobFailed), outcome
    assert "BackoffLimitExceeded" in str(outcome["error"])

    model = run_step("train_model", make_context(pipeline, "r2", settings, try_number=2), *inputs)
    second = job_name("kube", "r2", 2)
    assert f"jobs/default/{first}" in cluster.deleted and f"services/default/{first}" in cluster.deleted
    assert _jobs(cluster) == [first, second]
    assert model["resumed_from_step"] > 0 and model["workers"] == 2
    runs = {r.data.tags["airflow.try_number"]: r.info.status for r in _train_run(settings, "kube")}
    assert runs == {"1": "FAILED", "2": "FINISHED"}


def test_under_airflow_the_task_defers_on_the_job_and_resumes_in_the_same_mlflow_run(tmp_path, cluster,
                                                                                       monkeypatch):
    """dag.test() runs the trigger in the test's process: the provider's KubernetesJobTrigger reads
    the Job through the Airflow connection until it ends, then train_model runs again and logs the model."""
    import subprocess
    import sys

    from airflow.dag_processing.dagbag import DagBag

    from tasks.settings import Settings

    folder = tmp_path / "dags"
    (folder / "pipelines").mkdir(parents=True)
    for source in (REPO / "dags").glob("*.py"):
        (folder / source.name).write_text(source.read_text())
    write_pipeline(folder / "pipelines", name="kube", train={"epochs": 2, **KUBE}, **QUICK)
    monkeypatch.setenv("TFPIPE_PIPELINES_DIR", str(folder / "pipelines"))
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True,
                   timeout=600)
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    dag = bag.dags["kube"]
    for task in dag.tasks:
        task.retries = 0
    dag_run = dag.test()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    assert states["train_model"] == "success" and states["push_model"] == "success", states
    (job,) = _jobs(cluster)
    assert cluster.job("default", job).manifest["status"]["conditions"][0]["type"] == "Complete"
    (train,) = _train_run(Settings.from_env(), "kube")  # one run: the deferral kept it open
    assert train.info.status == "FINISHED" and train.data.tags["tfpipe.waiting"] == "false"
    assert train.data.tags["tfpipe.workers"] == "2"
