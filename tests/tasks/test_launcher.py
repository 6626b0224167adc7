"""TF_CONFIGs, worker roles and the Kubernetes TFJob spec (the parts of multi-worker that need no cluster)."""

import json
import socket

import pytest
import yaml

from tasks.cli import main
from tasks.training.cluster import tf_configs
from tasks.training.launcher import expected_tfjob_tf_configs, free_ports, is_server_task, node_id, tfjob_manifest
from tasks.training.distribution import WorkerRole


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
    with pytest.raises(ValueError, match="distinct"):
        tf_configs(["127.0.0.1:1"], ps=["127.0.0.1:1"], chief="127.0.0.1:2")
    with pytest.raises(ValueError, match="needs a chief"):
        tf_configs(["127.0.0.1:1"], ps=["127.0.0.1:2"])


def test_parameter_server_cluster_has_a_coordinating_chief_workers_and_ps():
    configs = tf_configs(["w0:1", "w1:1"], ps=["p0:1"], chief="c:1")
    assert [c["task"] for c in configs] == [
        {"type": "chief", "index": 0}, {"type": "worker", "index": 0}, {"type": "worker", "index": 1},
        {"type": "ps", "index": 0}]
    assert configs[0]["cluster"] == {"chief": ["c:1"], "worker": ["w0:1", "w1:1"], "ps": ["p0:1"]}
    assert [node_id(c) for c in configs] == ["chief-0", "worker-0", "worker-1", "ps-0"]
    # The chief trains (coordinates); the others serve it.
    assert [is_server_task(c) for c in configs] == [False, True, True, True]
    roles = [WorkerRole.from_tf_config(json.dumps(c)) for c in configs]
    assert [r.is_chief for r in roles] == [True, False, False, False]
    assert {r.num_workers for r in roles} == {2} and {r.parameter_servers for r in roles} == {1}
    # Without parameter servers no task is a server: every worker runs the training loop.
    assert not any(is_server_task(c) for c in tf_configs(["w0:1", "w1:1"]))
    assert not is_server_task(None)


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
    assert container["command"] == ["python", "-m", "tasks.training.launcher", "worker", "s3://bucket/run/request.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "env" not in container  # credentials come from a secret, never the manifest
    configs = expected_tfjob_tf_configs("penguins-train", 4, "ml")
    assert configs[1]["cluster"]["worker"][3] == "penguins-train-worker-3.ml.svc:2222"
    assert WorkerRole.from_tf_config(json.dumps(configs[0])).is_chief


def test_tfjob_with_parameter_servers_has_a_chief_workers_and_ps():
    manifest = tfjob_manifest("churn-train", "tfpipe:1", 3, "s3://b/r.json", namespace="ml", gpus=1,
                              parameter_servers=2)
    specs = manifest["spec"]["tfReplicaSpecs"]
    assert {k: v["replicas"] for k, v in specs.items()} == {"Chief": 1, "Worker": 3, "PS": 2}
    for kind, spec in specs.items():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["command"] == ["python", "-m", "tasks.training.launcher", "worker", "s3://b/r.json"]
        assert container["env"] == [{"name": "GRPC_FAIL_FAST", "value": "use_caller"}]  # no credentials
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == (kind == "Worker")
        assert spec["restartPolicy"] == "OnFailure"  # a restarted worker pod rejoins the coordinator
    configs = expected_tfjob_tf_configs("churn-train", 3, "ml", parameter_servers=2)
    assert configs[0]["cluster"] == {
        "chief": ["churn-train-chief-0.ml.svc:2222"],
        "worker": [f"churn-train-worker-{i}.ml.svc:2222" for i in range(3)],
        "ps": [f"churn-train-ps-{i}.ml.svc:2222" for i in range(2)],
    }
    assert [node_id(c) for c in configs] == ["chief-0", "worker-0", "worker-1", "worker-2", "ps-0", "ps-1"]
    assert [is_server_task(c) for c in configs] == [False] + [True] * 5


def test_tfpipe_tfjob_prints_the_manifest(capsys):
    assert main(["tfjob", "--name", "churn-train", "--image", "tfpipe:1", "--workers", "3",
                 "--request", "s3://b/r.json"]) == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    assert main(["tfjob", "--name", "churn-train", "--image", "tfpipe:1", "--parameter-servers", "2",
                 "--request", "s3://b/r.json"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["tfReplicaSpecs"]["PS"]["replicas"] == 2
