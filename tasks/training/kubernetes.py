"""Multi-machine training as Kubernetes pods, on core APIs only: an Indexed Job and a headless
Service (no operator: Kubeflow Trainer v2 dropped distributed TensorFlow, and the v1 ``TFJob``
stays available through :func:`tasks.training.launcher.tfjob_manifest` for clusters that run it).

Every pod runs the local launcher's entry point (``python -m tasks.training.launcher worker
REQUEST_URI``). Kubernetes gives each pod of an Indexed Job its completion index
(``JOB_COMPLETION_INDEX``) and, the Job's ``subdomain`` being a headless Service, a stable name
``<job>-<index>.<service>.<namespace>.svc``. The manifest lists the cluster's addresses in
``TFPIPE_TRAIN_CLUSTER``, so each pod derives its own ``TF_CONFIG`` from its index
(:func:`tf_config_for_pod`): the same ``TF_CONFIG``s as :func:`tasks.training.cluster.tf_configs`
gives local processes.

* ``multi_worker``: pod ``i`` is worker ``i`` (worker 0 the chief); the Job succeeds when every
  index has.
* ``parameter_server``: pod 0 is the chief (the coordinator), then the workers, then the
  parameter servers. Those serve until stopped, so the Job's success policy ends it when index 0
  succeeds (``successPolicy``, Kubernetes 1.33+).

A failed container is restarted in its pod (``restartPolicy: OnFailure``, same name and
address), and training resumes from the chief's checkpoint copy on S3; ``backoffLimit`` bounds
the restarts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tasks.training.cluster import tf_configs

PORT = 2222
CLUSTER_ENV = "TFPIPE_TRAIN_CLUSTER"
INDEX_ENV = "JOB_COMPLETION_INDEX"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")  # a DNS label, short enough for "<name>-<index>"


def _check(name: str, namespace: str, workers: int, parameter_servers: int) -> None:
    for what, value in (("name", name), ("namespace", namespace)):
        if not _NAME.match(value):
            raise ValueError(f"{what} {value!r} must be a DNS label: lower-case letters, digits and '-', "
                             "starting with a letter, at most 42 characters")
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if parameter_servers < 0:
        raise ValueError("parameter_servers must not be negative")


def cluster_layout(name: str, workers: int, namespace: str = "default", parameter_servers: int = 0) -> dict[str, Any]:
    """Every pod's address by role, in index order: chief (with parameter servers), workers, ps."""
    pods = workers + (1 + parameter_servers if parameter_servers else 0)
    addresses = [f"{name}-{i}.{name}.{namespace}.svc:{PORT}" for i in range(pods)]
    if not parameter_servers:
        return {"worker": addresses}
    return {"chief": addresses[:1], "worker": addresses[1:1 + workers], "ps": addresses[1 + workers:]}


def tf_config_for_pod(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The ``TF_CONFIG`` of the pod whose environment is ``env``; None outside such a pod.

    Raises:
        ValueError: The index or the cluster in the environment is malformed.
    """
    if INDEX_ENV not in env or CLUSTER_ENV not in env:
        return None
    try:
        layout = json.loads(env[CLUSTER_ENV])
        index = int(env[INDEX_ENV])
        configs = tf_configs(layout["worker"], ps=layout.get("ps", ()), chief=(layout.get("chief") or [None])[0])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{CLUSTER_ENV}/{INDEX_ENV} do not describe a cluster: {error}") from error
    if not 0 <= index < len(configs):
        raise ValueError(f"{INDEX_ENV}={index} is outside the cluster of {len(configs)} pods")
    return configs[index]


def _container(image: str, request_uri: str, layout: Mapping[str, Any], cpu: str, memory: str, gpus: int,
               parameter_servers: int, cluster: bool = True) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
    env = [
        # Kubernetes sets it in an Indexed Job's pods; the downward API makes that explicit.
        {"name": INDEX_ENV, "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    ]
    if cluster:  # a lone pod (one_device, mirrored) trains without a TF_CONFIG
        env.insert(0, {"name": CLUSTER_ENV, "value": json.dumps(layout)})
    if parameter_servers:
        env.append({"name": "GRPC_FAIL_FAST", "value": "use_caller"})
    return {
        "name": "tensorflow",
        "image": image,
        "command": ["python", "-m", "tasks.training.launcher", "worker", request_uri],
        "ports": [{"name": "grpc", "containerPort": PORT}],
        "env": env,
        "envFrom": [{"secretRef": {"name": "tfpipe-env"}}],  # S3, MLflow: what a worker needs
        "resources": resources,
    }


def job_manifests(name: str, image: str, workers: int, request_uri: str, *, namespace: str = "default",
                  cpu: str = "4", memory: str = "16Gi", gpus: int = 0, parameter_servers: int = 0,
                  backoff_limit: int = 3, cluster: bool = True,
                  service_account: str | None = None) -> list[dict[str, Any]]:
    """The headless Service and the Indexed Job of one training cluster (``kubectl apply`` order).

    ``request_uri`` is the training request on storage every pod reads (S3). ``cluster=False``:
    one pod (``workers=1``) that trains alone, without a ``TF_CONFIG``.
    """
    if not cluster and (workers != 1 or parameter_servers):
        raise ValueError("a pod that trains alone is one worker without parameter servers")
    _check(name, namespace, workers, parameter_servers)
    layout = cluster_layout(name, workers, namespace, parameter_servers)
    pods = sum(len(addresses) for addresses in layout.values())
    labels = {"app.kubernetes.io/part-of": "tfpipe", "app.kubernetes.io/component": "training",
              "tfpipe/training-job": name}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"clusterIP": "None", "selector": {"tfpipe/training-job": name},
                 "publishNotReadyAddresses": True,  # peers resolve each other before they are ready
                 "ports": [{"name": "grpc", "port": PORT, "targetPort": PORT}]},
    }
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": backoff_limit,
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": dict(labels)},  # copies: shared objects would print as YAML anchors
            "spec": {
                "subdomain": name,
                "restartPolicy": "OnFailure",
                **({"serviceAccountName": service_account} if service_account else {}),
                "containers": [_container(image, request_uri, layout, cpu, memory, gpus, parameter_servers,
                                                      cluster)],
            },
        },
    }
    if parameter_servers:  # the coordinator's success ends the job; the servers never exit by themselves
        spec["successPolicy"] = {"rules": [{"succeededIndexes": "0", "succeededCount": 1}]}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": namespace, "labels": labels}, "spec": spec}
    return [service, job]
