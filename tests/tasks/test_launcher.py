"""TF_CONFIGs, worker roles and the Kubernetes TFJob spec (the parts of multi-worker that need no cluster)."""

import json
import socket

import pytest
import yaml

from tasks.cli import main
from tasks.launcher import expected_tfjob_tf_configs, free_ports, tf_configs, tfjob_manifest
from tasks.train import WorkerRole


def test_local_tf_configs_share_one_cluster_and_number_the_workers():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:  # free: each can be bound on loopback
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    configs = tf_configs([f"127.0.0.1:{p}" for p in ports])
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"] == {"worker": [f"127.0.0.1:{p}" for p in ports]} for c in configs)
    roles = [WorkerRole.from_tf_config(json.dumps(c)) for c in configs]
    assert [r.is_chief for r in roles] == [True, False, False]
    assert [r.node_id for r in roles] == ["worker-0", "worker-1", "worker-2"]
    assert {r.num_workers for r in roles} == {3}


def test_duplicate_or_missing_addresses_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        tf_configs(["127.0.0.1:1", "127.0.0.1:1"])
    with pytest.raises(ValueError, match="at least one"):
        tf_configs([])


def test_a_lone_process_is_the_chief_and_a_chief_task_outranks_worker_0():
    assert WorkerRole.from_tf_config(None).is_chief
    config = {"cluster": {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"]}}
    chief = WorkerRole.from_tf_config(json.dumps({**config, "task": {"type": "chief", "index": 0}}))
    worker0 = WorkerRole.from_tf_config(json.dumps({**config, "task": {"type": "worker", "index": 0}}))
    assert chief.is_chief and not worker0.is_chief and chief.num_workers == 3


def test_tfjob_runs_the_worker_entry_point_on_every_replica():
    manifest = tfjob_manifest("penguins-train", "registry.example/tfpipe:1.0", 4, "s3://bucket/run/request.json",
                              namespace="ml", gpus=1)
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    worker = manifest["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 4 and worker["restartPolicy"] == "OnFailure"
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the operator injects TF_CONFIG into this container
    assert container["command"] == ["python", "-m", "tasks.launcher", "worker", "s3://bucket/run/request.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "env" not in container  # credentials come from a secret, never the manifest
    configs = expected_tfjob_tf_configs("penguins-train", 4, "ml")
    assert configs[1]["cluster"]["worker"][3] == "penguins-train-worker-3.ml.svc:2222"
    assert WorkerRole.from_tf_config(json.dumps(configs[0])).is_chief


def test_tfpipe_tfjob_prints_the_manifest(capsys):
    assert main(["tfjob", "--name", "churn-train", "--image", "tfpipe:1", "--workers", "3",
                 "--request", "s3://b/r.json"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
