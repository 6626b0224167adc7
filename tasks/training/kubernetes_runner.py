"""``train.runner: kubernetes``: the training step runs its cluster as pods and waits for them.

The step writes its training request beside the run's artifacts (object storage every pod
reads), submits the headless Service and the Indexed Job of :mod:`tasks.training.kubernetes`
(under Airflow through the cncf.kubernetes provider's ``KubernetesHook`` and the connection
``TFPIPE_KUBERNETES_CONN_ID``, default ``kubernetes_default``; outside Airflow, the kubeconfig),
and then waits: under Airflow it raises :class:`TrainingSubmitted` and the task defers on the
provider's ``KubernetesJobTrigger`` (no worker slot held); ``tfpipe run`` polls. When the Job
has ended the step runs again: it finds the result the chief wrote and goes on as after local
training.

Each try of the task has its own Job, ``tfpipe-train-<run hash>-<try>``. A try first deletes the
Jobs that earlier tries of the run left (failed, or still running after their task was lost),
so one cluster trains at a time, and the new Job resumes from the checkpoint copy on object
storage. Inside a Job, a failed container restarts in its pod (``backoffLimit``).

The image, namespace, connection and the pods' service account are the deployment's
(environment of the Airflow worker), never a run's: ``TFPIPE_TRAIN_IMAGE``,
``TFPIPE_TRAIN_NAMESPACE``, ``TFPIPE_KUBERNETES_CONN_ID``, ``TFPIPE_TRAIN_SERVICE_ACCOUNT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks import artifacts, storage
from tasks.errors import StepWaiting, UserError
from tasks.training.kubernetes import job_manifests

log = logging.getLogger(__name__)

RUN_LABEL = "tfpipe/training-run"
CONTAINER = "tensorflow"
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")  # an image reference: no spaces, no shell words
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")


class TrainingSubmitted(StepWaiting):
    """The training Job runs: wait for ``namespace/job`` to end, then run the step again."""

    def __init__(self, job: str, namespace: str, conn_id: str | None, poll_seconds: float) -> None:
        super().__init__(f"training Job {namespace}/{job} submitted")
        self.job, self.namespace, self.conn_id, self.poll_seconds = job, namespace, conn_id, poll_seconds


class TrainingJobFailed(RuntimeError):
    """This try's Job failed; the task's next try submits a new one, which resumes from the checkpoints."""


@dataclass(frozen=True)
class Placement:
    """Where the deployment runs training pods."""

    image: str
    namespace: str = "default"
    conn_id: str = "kubernetes_default"
    service_account: str | None = None  # the pods' identity: S3 through IRSA or workload identity

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Placement:
        env = os.environ if env is None else env
        image = env.get("TFPIPE_TRAIN_IMAGE", "")
        if not image:
            raise UserError("train.runner kubernetes: set TFPIPE_TRAIN_IMAGE on the Airflow workers to the "
                            "training image the pods run (docker/Dockerfile)")
        placement = cls(image, env.get("TFPIPE_TRAIN_NAMESPACE") or "default",
                        env.get("TFPIPE_KUBERNETES_CONN_ID") or "kubernetes_default",
                        env.get("TFPIPE_TRAIN_SERVICE_ACCOUNT") or None)
        for what, value, pattern in (("TFPIPE_TRAIN_IMAGE", placement.image, _IMAGE),
                                     ("TFPIPE_TRAIN_NAMESPACE", placement.namespace, _NAMESPACE),
                                     ("TFPIPE_KUBERNETES_CONN_ID", placement.conn_id, _CONN_ID),
                                     ("TFPIPE_TRAIN_SERVICE_ACCOUNT", placement.service_account or "x", _NAMESPACE)):
            if not pattern.match(value):
                raise UserError(f"{what}={value!r} is not a valid name")
        return placement


def job_name(pipeline: str, run_id: str, try_number: int) -> str:
    """The Job (and Service) of one try: a DNS label whatever the pipeline and run are called."""
    return f"tfpipe-train-{run_key(pipeline, run_id)}-{try_number}"


def run_key(pipeline: str, run_id: str) -> str:
    """The label value shared by every try's Job of one pipeline run."""
    return hashlib.sha256(f"{pipeline}\0{run_id}".encode()).hexdigest()[:12]


def cluster_shape(params: Any) -> tuple[int, int, bool]:
    """(workers, parameter servers, whether the pods form a ``TF_CONFIG`` cluster) for ``train``."""
    if params.strategy == "multi_worker":
        return params.workers, 0, True
    if params.strategy == "parameter_server":
        return params.workers, params.parameter_servers, True
    return 1, 0, False  # one pod trains alone (its GPUs mirrored, as on one machine)


def pod_request(request: Mapping[str, Any], result_uri: str) -> dict[str, Any]:
    """The local request with each pod's own disk for its scratch (relative paths: the pod's
    temporary folder, see :func:`tasks.training.launcher.main`), and the result on storage."""
    return {**request, "checkpoint_dir": "checkpoints", "cache_dir": "cache", "work_dir": "work",
            "result_path": result_uri}


def manifests(name: str, key: str, placement: Placement, params: Any, request_uri: str) -> list[dict[str, Any]]:
    workers, parameter_servers, cluster = cluster_shape(params)
    k8s = params.kubernetes
    made = job_manifests(name, placement.image, workers, request_uri, namespace=placement.namespace, cpu=k8s.cpu,
                         memory=k8s.memory, gpus=k8s.gpus, parameter_servers=parameter_servers,
                         backoff_limit=k8s.backoff_limit, cluster=cluster,
                         service_account=placement.service_account)
    for manifest in made:
        manifest["metadata"]["labels"][RUN_LABEL] = key
    return made


class Cluster:
    """The Kubernetes API through the ``kubernetes`` client's CoreV1 and BatchV1 APIs: under
    Airflow, those of the cncf.kubernetes provider's hook (``dags/kubernetes_training.py`` puts
    the factory in the run's context); elsewhere, the in-cluster config or the kubeconfig."""

    def __init__(self, core: Any, batch: Any) -> None:
        self.core, self.batch = core, batch

    @classmethod
    def from_kubeconfig(cls, conn_id: str | None = None) -> Cluster:
        """The cluster this process is in, else the kubeconfig's (``KUBECONFIG``); ``conn_id`` is Airflow's."""
        try:
            from kubernetes import client, config
        except ImportError as error:
            raise UserError("train.runner kubernetes needs the kubernetes client: install tfpipe with its "
                            "production extra (uv sync --extra production)") from error
        try:
            config.load_incluster_config()
        except config.ConfigException:  # KUBECONFIG as it is now: the client reads it once, at import
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        return cls(client.CoreV1Api(), client.BatchV1Api())

    def job(self, name: str, namespace: str) -> Any | None:
        from kubernetes.client.rest import ApiException

        try:
            return self.batch.read_namespaced_job_status(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def remove_run(self, key: str, namespace: str, keep: str) -> None:
        """Delete the Jobs (their pods with them) and Services of the run's other tries."""
        selector = f"{RUN_LABEL}={key}"
        for job in self.batch.list_namespaced_job(namespace, label_selector=selector).items:
            if job.metadata.name != keep:
                log.info("deleting training Job %s/%s of an earlier try", namespace, job.metadata.name)
                self.batch.delete_namespaced_job(job.metadata.name, namespace, propagation_policy="Foreground")
        for service in self.core.list_namespaced_service(namespace, label_selector=selector).items:
            if service.metadata.name != keep:
                self.core.delete_namespaced_service(service.metadata.name, namespace)

    def create(self, service: dict[str, Any], job: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        namespace = job["metadata"]["namespace"]
        try:
            self.core.create_namespaced_service(namespace, service)
        except ApiException as error:
            if error.status != 409:  # already there: this try submitted it before it was interrupted
                raise
        self.batch.create_namespaced_job(namespace, job)

    def wait(self, name: str, namespace: str, poll_seconds: float) -> None:
        """Until the Job has ended (``tfpipe run``; under Airflow the task defers instead)."""
        while (job := self.job(name, namespace)) is not None and not (self.failure(job) or self.succeeded(job)):
            time.sleep(poll_seconds)

    @staticmethod
    def _condition(job: Any, kind: str) -> Any | None:
        for condition in (job.status.conditions if job.status else None) or ():
            if condition.type == kind and condition.status == "True":
                return condition
        return None

    def failure(self, job: Any) -> str | None:
        """Why the Job failed (its ``Failed`` condition's reason and message), or None."""
        failed = self._condition(job, "Failed")
        return None if failed is None else ": ".join(filter(None, (failed.reason, failed.message))) or "Failed"

    def succeeded(self, job: Any) -> bool:
        return self._condition(job, "Complete") is not None


def train_on_kubernetes(ctx: Any, request: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``request`` as this try's Job and return what its chief wrote (see the module docstring).

    Raises:
        TrainingSubmitted: Under Airflow, while the Job runs: the task defers, then runs the step again.
        TrainingJobFailed: The Job failed (or ended without a result): the task's retry starts another.
    """
    if not storage.is_s3(ctx.settings.artifact_root):
        raise UserError("train.runner kubernetes: the pods read the request and write the model on object "
                        f"storage, but TFPIPE_ARTIFACT_ROOT is {ctx.settings.artifact_root}: set it to an s3:// URI")
    placement, params = Placement.from_env(), ctx.config.train
    under_airflow = ctx.orchestrator == "airflow"
    name, key = job_name(ctx.config.name, ctx.run_id, ctx.try_number), run_key(ctx.config.name, ctx.run_id)
    folder = artifacts.training_job_uri(ctx.settings.artifact_root, ctx.config.name, ctx.run_id)
    result_uri = storage.join(folder, f"{name}.result.json")
    cluster = (ctx.kubernetes or Cluster.from_kubeconfig)(placement.conn_id)
    where = f"{placement.namespace}/{name}"
    while True:
        if storage.exists(result_uri):
            log.info("training Job %s finished: its result is %s", where, result_uri)
            return json.loads(storage.read_bytes(result_uri))
        job = cluster.job(name, placement.namespace)
        if job is None:
            _submit(cluster, placement, ctx, request, name, key, folder, result_uri)
        elif failure := cluster.failure(job):
            raise TrainingJobFailed(f"training Job {where} failed: {failure}. The task's next try submits a new "
                                    "Job, which resumes from the checkpoint copy")
        elif cluster.succeeded(job):
            raise TrainingJobFailed(f"training Job {where} succeeded but its chief wrote no result at {result_uri}")
        if under_airflow:
            raise TrainingSubmitted(name, placement.namespace, placement.conn_id, params.kubernetes.poll_seconds)
        log.info("waiting for training Job %s", where)
        cluster.wait(name, placement.namespace, params.kubernetes.poll_seconds)


def _submit(cluster: Cluster, placement: Placement, ctx: Any, request: Mapping[str, Any], name: str, key: str,
            folder: str, result_uri: str) -> None:
    cluster.remove_run(key, placement.namespace, keep=name)
    request_uri = storage.join(folder, f"{name}.request.json")
    storage.write_bytes(request_uri, json.dumps(pod_request(request, result_uri), indent=1).encode())
    service, job = manifests(name, key, placement, ctx.config.train, request_uri)
    cluster.create(service, job)
    log.info("submitted training Job %s/%s: %d pods of %s, request %s", placement.namespace, name,
             job["spec"]["completions"], placement.image, request_uri)
