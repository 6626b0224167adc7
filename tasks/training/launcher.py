"""Multi-worker training: ``TF_CONFIG``s, a local launcher, and the Kubernetes route.

On one machine, :func:`launch` starts N worker processes on 127.0.0.1, each with its own
``TF_CONFIG`` (and, when asked, pinned to its own cores), waits for all of them, stops the
others as soon as one fails and raises with that worker's exit status and the end of its log,
and returns what the chief wrote. Each worker runs ``python -m tasks.training.launcher worker
REQUEST``: the same :func:`tasks.training.loop.train_model` call that a pod runs on Kubernetes,
where the Kubeflow training operator's ``TFJob`` (see :func:`tfjob_manifest`) sets
``TF_CONFIG`` instead.

``parameter_server`` clusters have three kinds of task: the chief (the coordinator, which
runs the training loop and schedules steps on the workers), the workers and the parameter
servers (``ps``, which hold the variables). Workers and parameter servers run a
``tf.distribute.Server`` and do what the chief sends them; the same entry point tells them
apart by their ``TF_CONFIG``. Asynchronous training tolerates a lost worker: the launcher
starts it again (``max_restarts``) and the coordinator re-runs the steps it lost. A lost
chief or parameter server stops the cluster, and the retry resumes from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.training.cluster import tf_configs

RESULT_FILE = "result.json"

log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A training worker exited with an error; the message holds its status and last log lines."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (bound together, then released)."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]


def node_id(tf_config: Mapping[str, Any] | None) -> str:
    """``<type>-<index>`` of a task (``worker-0`` for a lone process)."""
    task = (tf_config or {}).get("task", {})
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


def is_server_task(tf_config: Mapping[str, Any] | None) -> bool:
    """A worker or parameter server of a ``parameter_server`` cluster: it serves, the chief trains."""
    if not tf_config or "ps" not in tf_config.get("cluster", {}):
        return False
    return tf_config.get("task", {}).get("type") in ("worker", "ps")


def core_sets(workers: int, cpus: int | None = None) -> list[list[int]]:
    """Split the CPUs this process may use into ``workers`` disjoint sets (empty sets when too few)."""
    available = sorted(os.sched_getaffinity(0)) if cpus is None else list(range(cpus))
    if len(available) < workers:
        return [[] for _ in range(workers)]
    share = len(available) // workers
    return [available[i * share:(i + 1) * share] for i in range(workers)]


@dataclass
class WorkerProcess:
    index: int
    process: subprocess.Popen
    log_path: Path
    config: dict[str, Any] | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return node_id(self.config)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop(workers: list[WorkerProcess], grace: float = 10.0) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def launch(
    request: Mapping[str, Any],
    workers: int,
    run_dir: Path,
    *,
    parameter_servers: int = 0,
    pin_cores: bool | list[list[int]] = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    max_restarts: int = 3,
    poll: float = 0.5,
) -> dict[str, Any]:
    """Run one training as local processes and return the chief's result.

    Args:
        request: What every worker trains (see :func:`run_worker`); written to ``run_dir``.
        workers: Number of worker processes. With 1 (and no parameter servers), the process
            has no ``TF_CONFIG``: a fresh process for a strategy that must configure devices
            before TensorFlow starts.
        run_dir: Request, per-task logs (``<type>-<index>.log``) and the chief's result.
        parameter_servers: With any, a ``parameter_server`` cluster: a chief (the coordinator,
            which trains), ``workers`` workers and this many parameter servers.
        pin_cores: Give each process its own disjoint set of cores (True: split them evenly),
            or the cores of each process, in the order chief, workers, parameter servers.
        env: Extra environment for the processes.
        timeout: Seconds before every process is stopped and :class:`TimeoutError` raised.
        max_restarts: ``parameter_server`` only: times a lost worker is started again (the
            coordinator re-runs its steps) before the training fails.

    Raises:
        WorkerFailed: A worker (or, with parameter servers, the chief or a parameter server)
            exited non-zero, or a worker was lost more than ``max_restarts`` times; the other
            processes were stopped.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    request_path = run_dir / "request.json"
    request_path.write_text(json.dumps({**request, "result_path": str(result_path)}, indent=2))
    configs = _cluster_configs(workers, parameter_servers)
    starter = _Starter(request_path, _cores_for(pin_cores, len(configs)), _task_env(env, parameter_servers))
    started: list[WorkerProcess] = []
    try:
        for index, config in enumerate(configs):
            log_path = run_dir / f"{node_id(config)}.log"
            started.append(WorkerProcess(index, starter.start(index, config, log_path), log_path, config))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (_cluster_done(started, starter, max_restarts) if parameter_servers else _workers_done(started)):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"training workers still running after {timeout:.0f} s; stopped")
            time.sleep(poll)
    except BaseException:
        _stop(started)
        raise
    _stop(started)  # parameter-server tasks serve until stopped
    if not result_path.is_file():
        raise WorkerFailed(f"the chief exited without writing {result_path}; see {started[0].log_path}", 1)
    restarts = {w.name: w.restarts for w in started if w.restarts}
    return {**json.loads(result_path.read_text()), **({"worker_restarts": restarts} if restarts else {})}


def _cluster_configs(workers: int, parameter_servers: int) -> list[dict[str, Any] | None]:
    """Each process's ``TF_CONFIG`` (chief first), on free ports of 127.0.0.1; None for a lone process."""
    if parameter_servers:
        addresses = [f"127.0.0.1:{p}" for p in free_ports(1 + workers + parameter_servers)]
        return [*tf_configs(addresses[1:1 + workers], ps=addresses[1 + workers:], chief=addresses[0])]
    if workers > 1:
        return [*tf_configs([f"127.0.0.1:{p}" for p in free_ports(workers)])]
    return [None]


def _cores_for(pin_cores: bool | list[list[int]], processes: int) -> list[list[int]]:
    if isinstance(pin_cores, list):
        if len(pin_cores) != processes:
            raise ValueError(f"pin_cores names {len(pin_cores)} core sets for {processes} processes")
        return pin_cores
    return core_sets(processes) if pin_cores else [[] for _ in range(processes)]


def _task_env(env: Mapping[str, str] | None, parameter_servers: int) -> dict[str, str]:
    base_env = {**os.environ, **(env or {})}
    base_env.pop("TF_CONFIG", None)
    if parameter_servers:
        base_env["GRPC_FAIL_FAST"] = "use_caller"  # a lost worker fails its steps at once, so they are re-run
    return base_env


@dataclass
class _Starter:
    """Starts (and restarts) one task of the cluster: ``python -m tasks.training.launcher worker``."""

    request_path: Path
    cores: list[list[int]]
    env: dict[str, str]

    def start(self, index: int, config: dict[str, Any] | None, log_path: Path, log_mode: str = "wb") -> subprocess.Popen:
        task_env = dict(self.env)
        if config is not None:
            task_env["TF_CONFIG"] = json.dumps(config)
        cores = self.cores[index]
        if cores:
            # Compute threads for the process's cores. Inter-op threads mostly wait (collectives,
            # tf.data): with as few as the cores, one-core workers stalled for seconds at a time.
            task_env["TF_NUM_INTRAOP_THREADS"] = str(len(cores))
            task_env["TF_NUM_INTEROP_THREADS"] = str(max(4, 2 * len(cores)))
        with log_path.open(log_mode) as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "tasks.training.launcher", "worker", str(self.request_path)],
                env=task_env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=(lambda c=tuple(cores): os.sched_setaffinity(0, c)) if cores else None,
            )


def _workers_done(started: list[WorkerProcess]) -> bool:
    """All workers exited 0; raises at the first that failed."""
    codes = [w.process.poll() for w in started]
    failed = [w for w, code in zip(started, codes) if code not in (None, 0)]
    if failed:
        worker = failed[0]
        raise WorkerFailed(
            f"training worker {worker.index} of {len(started)} exited with status {worker.process.returncode}; "
            f"the other workers were stopped. End of {worker.log_path}:\n{_tail(worker.log_path)}",
            worker.process.returncode,
        )
    return all(code == 0 for code in codes)


def _cluster_done(started: list[WorkerProcess], starter: _Starter, max_restarts: int) -> bool:
    """A parameter-server cluster: done when the chief exited 0 (the servers never exit by
    themselves); a lost worker is started again up to ``max_restarts`` times; any other loss raises."""
    chief = started[0]
    codes = [w.process.poll() for w in started]
    if chief.process.returncode == 0:
        return True
    for worker in [w for w, code in zip(started, codes) if code is not None]:
        if worker is not chief and worker.name.startswith("worker-") and worker.restarts < max_restarts:
            worker.restarts += 1
            log.warning("%s exited with status %s: starting it again (%d of %d)",
                        worker.name, worker.process.returncode, worker.restarts, max_restarts)
            worker.process = starter.start(worker.index, worker.config, worker.log_path, "ab")
            continue
        code = worker.process.returncode
        raise WorkerFailed(
            f"training task {worker.name} of the parameter-server cluster exited with status {code}"
            f"{' (restarted %d times)' % worker.restarts if worker.restarts else ''}; the other tasks "
            f"were stopped. End of {worker.log_path}:\n{_tail(worker.log_path)}",
            code or 1,
        )
    return False


def run_worker(request_path: Path) -> int:
    """One worker: train as the request says, the chief writing the result (``TF_CONFIG`` from the environment)."""
    import logging

    from tasks.config import TrainConfig
    from tasks.training.model import ModelSpec
    from tasks.training.distribution import WorkerRole
    from tasks.training.loop import train_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = json.loads(Path(request_path).read_text())
    tf_config = os.environ.get("TF_CONFIG")
    role = WorkerRole.from_tf_config(tf_config)
    tracking = request.get("tracking") or None
    if tracking:
        from tasks.settings import tracking_uri_for_worker

        tracking = {**tracking, "uri": tracking_uri_for_worker(tracking["uri"])}
    if is_server_task(json.loads(tf_config) if tf_config else None):
        return serve_task(tracking)
    with ExitStack() as stack:
        progress = None
        if tracking:
            from tasks.tracking import BatchedProgress, system_metrics

            stack.enter_context(system_metrics(tracking["uri"], tracking["run_id"], role.node_id))
            if role.is_chief:
                progress = stack.enter_context(BatchedProgress.for_run(tracking["uri"], tracking["run_id"]))
        result = train_model(
            request["examples_uri"],
            ModelSpec.from_dict(request["spec"]),
            TrainConfig.model_validate(request["params"]),
            request["output_uri"],
            Path(request["checkpoint_dir"]),
            Path(request["cache_dir"]),
            Path(request["work_dir"]) / role.node_id,
            progress=progress,
            search_path=tuple(request.get("search_path", ())),
            tf_config=tf_config,
            checkpoint_uri=request.get("checkpoint_uri"),
        )
    if role.is_chief and request.get("result_path"):
        import resource

        from tasks import storage

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        # A local file for the local launcher; object storage for a pod (tasks/training/kubernetes_runner.py).
        storage.write_bytes(request["result_path"],
                            json.dumps({**result.to_dict(), "peak_rss_mb": round(peak_mb, 1)}).encode())
    return 0


def serve_task(tracking: Mapping[str, str] | None = None) -> int:
    """A worker or parameter server of a ``parameter_server`` cluster: serve the chief until stopped.

    Its system metrics go to the training run, tagged with its node id, like every worker's.
    """
    import logging

    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    name = f"{resolver.task_type}-{resolver.task_id}"
    with ExitStack() as stack:
        if tracking:
            from tasks.tracking import system_metrics

            stack.enter_context(system_metrics(tracking["uri"], tracking["run_id"], name))
        server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                      task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc", start=True)
        logging.getLogger(__name__).info("%s serving at %s", name, server.target)
        server.join()  # until the launcher (or the pod's end) stops it
    return 0


def tfjob_manifest(name: str, image: str, workers: int, request_uri: str, *, namespace: str = "default",
                   cpu: str = "4", memory: str = "16Gi", gpus: int = 0, parameter_servers: int = 0) -> dict[str, Any]:
    """A Kubeflow training-operator ``TFJob`` running the same worker entry point as pods.

    The operator creates one pod per replica, a headless service per pod, and sets each
    pod's ``TF_CONFIG`` (the cluster of ``<job>-<type>-<i>.<namespace>.svc:2222``). Without
    parameter servers, worker 0 is the chief. With them (``parameter_server``), a ``Chief``
    pod coordinates, ``PS`` pods hold the variables, and the job succeeds when the chief
    does (the operator's default success policy); a lost worker pod is restarted and rejoins.
    ``request_uri`` is the request JSON on storage every pod can read (S3).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if parameter_servers < 0:
        raise ValueError("parameter_servers must not be negative")

    def replica(replicas: int, accelerators: int) -> dict[str, Any]:
        resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
        if accelerators:
            resources["limits"]["nvidia.com/gpu"] = accelerators
        container: dict[str, Any] = {
            "name": "tensorflow",  # the container name the operator looks for
            "image": image,
            "command": ["python", "-m", "tasks.training.launcher", "worker", request_uri],
            "ports": [{"name": "tfjob-port", "containerPort": 2222}],
            "envFrom": [{"secretRef": {"name": "tfpipe-env"}}],
            "resources": resources,
        }
        if parameter_servers:
            container["env"] = [{"name": "GRPC_FAIL_FAST", "value": "use_caller"}]
        return {"replicas": replicas, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [container]}}}

    specs = {"Worker": replica(workers, gpus)}
    if parameter_servers:
        specs = {"Chief": replica(1, 0), **specs, "PS": replica(parameter_servers, 0)}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "tfpipe"}},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3},
            "tfReplicaSpecs": specs,
        },
    }


def expected_tfjob_tf_configs(name: str, workers: int, namespace: str = "default",
                              parameter_servers: int = 0) -> list[dict[str, Any]]:
    """The ``TF_CONFIG`` each pod of :func:`tfjob_manifest` receives from the operator."""
    def addresses(kind: str, count: int) -> list[str]:
        return [f"{name}-{kind}-{i}.{namespace}.svc:2222" for i in range(count)]

    if parameter_servers:
        return tf_configs(addresses("worker", workers), ps=addresses("ps", parameter_servers),
                          chief=addresses("chief", 1)[0])
    return tf_configs(addresses("worker", workers))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "worker":
        print("usage: python -m tasks.training.launcher worker REQUEST.json", file=sys.stderr)
        return 2
    request = args[1]
    if "TF_CONFIG" not in os.environ:  # a pod of an Indexed Job derives it from its index
        from tasks.training.kubernetes import tf_config_for_pod

        derived = tf_config_for_pod(os.environ)
        if derived is not None:
            os.environ["TF_CONFIG"] = json.dumps(derived)
    if "://" in request:  # a pod reads its request from shared storage
        request = str(_pod_request(request))
    return run_worker(Path(request))


def _pod_request(uri: str) -> Path:
    """A pod's request, downloaded, its relative folders placed in the pod's temporary folder."""
    import tempfile

    from tasks import storage

    scratch = Path(tempfile.gettempdir()) / "tfpipe"
    request = json.loads(storage.read_bytes(uri))
    for key in ("checkpoint_dir", "cache_dir", "work_dir"):
        if not Path(request[key]).is_absolute():
            request[key] = str(scratch / request[key])
    local = scratch / "request.json"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(request))
    return local


if __name__ == "__main__":
    sys.exit(main())
