"""``train.runner: kubernetes`` without a cluster: the Job of each try, the deployment's
placement checked where it becomes a manifest, the manifests against Kubernetes' OpenAPI
schemas, and the step's MLflow run that stays open while the task waits for the Job."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from tasks.config import ConfigError, TrainConfig
from tasks.errors import StepWaiting, UserError
from tasks.training.kubernetes import CLUSTER_ENV
from tasks.training.kubernetes_runner import (RUN_LABEL, Placement, job_name, manifests, pod_request, run_key,
                                              train_on_kubernetes)
from tasks.tracking import MlflowTracking, RunIdentity

KUBERNETES = "1.33"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_each_try_of_a_run_has_its_own_job_named_as_kubernetes_allows():
    names = {job_name(pipeline, run, attempt)
             for pipeline in ("penguins", "Churn v2 ☃", "x" * 300) for run in ("manual__2026-12-03T00:21:22+00:00",
                                                                              "scheduled__'; rm -rf /")
             for attempt in (1, 2, 17)}
    assert len(names) == 18
    assert all(DNS_LABEL.match(name) and len(name) <= 42 for name in names)
    assert job_name("p", "r", 1) == job_name("p", "r", 1)  # a resumed try finds its Job again
    assert job_name("p", "r", 1).startswith(f"tfpipe-train-{run_key('p', 'r')}-")


def test_the_placement_is_the_deployments_and_checked():
    env = {"TFPIPE_TRAIN_IMAGE": "registry.example:5000/team/tfpipe-worker@sha256:" + "a" * 64,
           "TFPIPE_TRAIN_NAMESPACE": "ml-training", "TFPIPE_KUBERNETES_CONN_ID": "k8s_gpu"}
    assert Placement.from_env(env) == Placement(env["TFPIPE_TRAIN_IMAGE"], "ml-training", "k8s_gpu")
    assert Placement.from_env({"TFPIPE_TRAIN_IMAGE": "tfpipe:1"}) == Placement("tfpipe:1", "default",
                                                                               "kubernetes_default")
    with pytest.raises(UserError, match="TFPIPE_TRAIN_IMAGE"):
        Placement.from_env({})
    for key, bad in (("TFPIPE_TRAIN_IMAGE", "tfpipe:1; curl evil | sh"), ("TFPIPE_TRAIN_IMAGE", "$(id)"),
                     ("TFPIPE_TRAIN_NAMESPACE", "../kube-system"), ("TFPIPE_KUBERNETES_CONN_ID", "a b"),
                     ("TFPIPE_TRAIN_SERVICE_ACCOUNT", "Admin!")):
        with pytest.raises(UserError, match=key):
            Placement.from_env({"TFPIPE_TRAIN_IMAGE": "tfpipe:1", key: bad})


@pytest.mark.parametrize("strategy, pods, cluster", [("multi_worker", 3, True), ("parameter_server", 6, True),
                                                     ("one_device", 1, False), ("auto", 1, False)])
def test_the_manifests_of_each_strategy_are_valid_kubernetes_objects(strategy, pods, cluster):
    params = TrainConfig(strategy=strategy, workers=3, parameter_servers=2, runner="kubernetes",
                         kubernetes={"cpu": "500m", "memory": "2Gi", "gpus": 1, "backoff_limit": 2})
    placement = Placement("tfpipe:1", "ml", service_account="tfpipe-training")
    service, job = manifests("tfpipe-train-abc-1", "abc", placement, params, "s3://b/p/r/request.json")
    for manifest in (service, job):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
        assert manifest["metadata"]["labels"][RUN_LABEL] == "abc" and manifest["metadata"]["namespace"] == "ml"
    assert job["spec"]["completions"] == pods and job["spec"]["backoffLimit"] == 2
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "tfpipe-training"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"},
                                      "limits": {"memory": "2Gi", "nvidia.com/gpu": 1}}
    assert (CLUSTER_ENV in {e["name"] for e in container["env"]}) is cluster
    assert container["command"][-1] == "s3://b/p/r/request.json"


def test_a_pod_keeps_its_scratch_on_its_own_disk_and_its_result_on_storage():
    request = {"examples_uri": "s3://b/e", "output_uri": "s3://b/m", "checkpoint_dir": "/home/airflow/ck",
               "cache_dir": "/home/airflow/cache", "work_dir": "/home/airflow/w", "checkpoint_uri": "s3://b/ck"}
    pod = pod_request(request, "s3://b/r.json")
    assert pod["result_path"] == "s3://b/r.json" and pod["checkpoint_uri"] == "s3://b/ck"
    assert all(not pod[key].startswith("/") for key in ("checkpoint_dir", "cache_dir", "work_dir"))


def test_runner_and_pod_resources_are_checked():
    for bad in ({"runner": "slurm"}, {"kubernetes": {"cpu": "4 cores"}}, {"kubernetes": {"memory": "16Gi; x"}},
                {"kubernetes": {"gpus": -1}}):
        with pytest.raises((ConfigError, ValueError)):
            TrainConfig(**bad)


def test_training_on_kubernetes_needs_object_storage_the_pods_read(tmp_path):
    from tasks.context import make_context
    from tasks.settings import Settings
    from tests.helpers import write_pipeline

    ctx = make_context(write_pipeline(tmp_path, name="kube"), run_id="r1", settings=Settings.from_env(
        {"TFPIPE_HOME": str(tmp_path / "home")}), overrides={"train.runner": "kubernetes"})
    with pytest.raises(UserError, match="s3://"):
        train_on_kubernetes(ctx, {})


def test_a_waiting_step_keeps_its_run_open_and_goes_on_in_it(tmp_path):
    tracking = MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}")
    identity = RunIdentity("kube", "manual__1", "kube")
    with pytest.raises(StepWaiting):
        with tracking.step_run(identity, "train_model", 1, may_wait=True) as tracker:
            tracker.log_metrics({"submitted": 1})
            raise StepWaiting("the Job runs")
    waiting = tracking.client.get_run(tracker.run_id)
    assert waiting.info.status == "RUNNING" and waiting.data.tags["tfpipe.waiting"] == "true"
    with tracking.step_run(identity, "train_model", 1, may_wait=True) as resumed:  # the deferred task resumes
        resumed.log_metrics({"final_loss": 0.1})
    assert resumed.run_id == tracker.run_id
    finished = tracking.client.get_run(tracker.run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics == {"submitted": 1, "final_loss": 0.1}
    with tracking.step_run(identity, "train_model", 2, may_wait=True) as retried:  # another try: its own run
        pass
    assert retried.run_id != tracker.run_id
    assert finished.data.tags["tfpipe.waiting"] == "false"
