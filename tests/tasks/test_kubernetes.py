"""Training on Kubernetes with core APIs: the Indexed Job and headless Service are validated
against Kubernetes' OpenAPI schemas (kubernetes-validate, strict), and the pod entry point is
run as processes with the environment each pod gets (only the cluster's addresses are local)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest

from tasks.training.kubernetes import CLUSTER_ENV, INDEX_ENV, cluster_layout, job_manifests, tf_config_for_pod
from tasks.training.cluster import tf_configs
from tasks.training.launcher import free_ports

KUBERNETES = "1.33"  # successPolicy is GA from 1.33


@pytest.mark.parametrize("parameter_servers, gpus", [(0, 1), (2, 0)])
def test_manifests_are_valid_kubernetes_objects(parameter_servers, gpus):
    for manifest in job_manifests("churn-train", "registry.example/tfpipe:0.1.0", 3, "s3://b/run/request.json",
                                  namespace="ml", gpus=gpus, parameter_servers=parameter_servers):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    bad = job_manifests("churn-train", "tfpipe:1", 2, "s3://b/r.json")[1]
    bad["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def _pod_env(job: dict, index: int) -> dict[str, str]:
    """What Kubernetes puts in pod ``index``'s environment from the Job's container spec."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    (indexed,) = [e for e in container["env"] if e["name"] == INDEX_ENV]
    assert "job-completion-index" in indexed["valueFrom"]["fieldRef"]["fieldPath"]
    return {**env, INDEX_ENV: str(index)}


@pytest.mark.parametrize("workers, parameter_servers", [(3, 0), (2, 1)])
def test_each_pod_derives_its_tf_config_from_its_index(workers, parameter_servers):
    service, job = job_manifests("penguins-train", "tfpipe:1", workers, "s3://b/r.json", namespace="ml",
                                 parameter_servers=parameter_servers)
    pods = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == pods
    # The pods' names resolve through the headless Service: <job>-<index>.<subdomain>.<namespace>.svc
    assert service["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    layout = cluster_layout("penguins-train", workers, "ml", parameter_servers)
    expected = tf_configs(layout["worker"], ps=layout.get("ps", ()), chief=(layout.get("chief") or [None])[0])
    derived = [tf_config_for_pod(_pod_env(job, i)) for i in range(pods)]
    assert derived == expected
    addresses = [a for role in ("chief", "worker", "ps") for a in layout.get(role, [])]
    assert addresses == [f"penguins-train-{i}.penguins-train.ml.svc:2222" for i in range(pods)]
    if parameter_servers:  # the coordinator's success ends the Job
        assert job["spec"]["successPolicy"] == {"rules": [{"succeededIndexes": "0", "succeededCount": 1}]}
        assert derived[0]["task"] == {"type": "chief", "index": 0}


def test_hostile_names_and_indexes_are_refused():
    for name in ("Penguins", "../etc", "a" * 60, "x;rm -rf", ""):
        with pytest.raises(ValueError, match="DNS label"):
            job_manifests(name, "tfpipe:1", 2, "s3://b/r.json")
    with pytest.raises(ValueError, match="DNS label"):
        job_manifests("ok", "tfpipe:1", 2, "s3://b/r.json", namespace="kube system")
    env = {CLUSTER_ENV: json.dumps(cluster_layout("t", 2)), INDEX_ENV: "2"}
    with pytest.raises(ValueError, match="outside the cluster of 2"):
        tf_config_for_pod(env)
    with pytest.raises(ValueError, match="do not describe a cluster"):
        tf_config_for_pod({CLUSTER_ENV: "{not json", INDEX_ENV: "0"})
    assert tf_config_for_pod({}) is None


def test_the_pod_entry_point_trains_as_a_cluster(tmp_path, home, capsys):
    """A real request (from a multi-worker `tfpipe run`), trained again by two processes that
    get exactly the pods' environment but for the addresses, which are local ports here."""
    from tasks.cli import main
    from tests.helpers import write_pipeline

    pipeline = write_pipeline(tmp_path, name="kube")
    assert main(["run", str(pipeline), "--until", "train_model", "--run-id", "r1",
                 "--set", "train.strategy=multi_worker", "--set", "train.epochs=2"]) == 0, capsys.readouterr().err
    (request_path,) = (home / "work" / "kube").rglob("workers/request.json")
    request = json.loads(request_path.read_text())
    pods = tmp_path / "pods"
    request.update(output_uri=str(pods / "model"), checkpoint_dir=str(pods / "checkpoints"),
                   work_dir=str(pods / "work"), result_path=str(pods / "result.json"), tracking=None,
                   checkpoint_uri=None)
    pods.mkdir()
    (pods / "request.json").write_text(json.dumps(request))
    _, job = job_manifests("kube-train", "tfpipe:1", 2, "s3://b/request.json")
    local = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    procs = []
    for index in range(2):
        env = {**base, **_pod_env(job, index), CLUSTER_ENV: json.dumps(local)}
        log = (pods / f"pod-{index}.log").open("w")
        procs.append(subprocess.Popen([sys.executable, "-m", "tasks.training.launcher", "worker",
                                       str(pods / "request.json")], env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0], "\n".join((pods / f"pod-{i}.log").read_text()[-2000:] for i in range(2))
    result = json.loads((pods / "result.json").read_text())
    assert result["workers"] == 2 and result["steps"] > 0
    assert (Path(result["uri"]) / "saved_model" / "saved_model.pb").is_file()


def test_tfpipe_train_job_prints_both_manifests(capsys):
    import yaml

    from tasks.cli import main

    assert main(["train-job", "--name", "churn-train", "--image", "tfpipe:1", "--workers", "3",
                 "--request", "s3://b/r.json", "--namespace", "ml", "--gpus", "1"]) == 0
    service, job = yaml.safe_load_all(capsys.readouterr().out)
    assert (service["kind"], job["kind"]) == ("Service", "Job") and job["spec"]["completions"] == 3
    for manifest in (service, job):
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    assert main(["train-job", "--name", "Bad_Name", "--image", "tfpipe:1", "--request", "s3://b/r.json"]) == 2
    assert "DNS label" in capsys.readouterr().err


def test_the_printed_manifests_are_plain_yaml():
    """No anchors or aliases (shared objects): what kubectl gets is what a person reads."""
    import yaml

    text = yaml.safe_dump_all(job_manifests("t", "tfpipe:1", 2, "s3://b/r.json"), sort_keys=False)
    assert "&id" not in text and "*id" not in text
