"""Multi-worker training: ``TF_CONFIG``s, a local launcher, and the Kubernetes route.

On one machine, :func:`launch` starts N worker processes on 127.0.0.1, each with its own
``TF_CONFIG`` (and, when asked, pinned to its own cores), waits for all of them, stops the
others as soon as one fails and raises with that worker's exit status and the end of its log,
and returns what the chief wrote. Each worker runs ``python -m tasks.launcher worker
REQUEST``: the same :func:`tasks.train.train_model` call that a pod runs on Kubernetes,
where the Kubeflow training operator's ``TFJob`` (see :func:`tfjob_manifest`) sets
``TF_CONFIG`` instead.
"""

from __future__ import annotations

import json
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

RESULT_FILE = "result.json"


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


def tf_configs(addresses: Sequence[str]) -> list[dict[str, Any]]:
    """One ``TF_CONFIG`` per worker: the same cluster, each its own index (worker 0 is the chief)."""
    if not addresses:
        raise ValueError("a cluster needs at least one worker address")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"worker addresses must be distinct: {list(addresses)}")
    cluster = {"worker": list(addresses)}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(len(addresses))]


def core_sets(workers: int, cpus: int | None = None) -> list[list[int]]:
    """Split the CPUs this process may use into ``workers`` disjoint sets (empty sets when too few)."""
    available = sorted(os.sched_getaffinity(0)) if cpus is None else list(range(cpus))
    if len(available) < workers:
        return [[] for _ in range(workers)]
    share = len(available) // workers
    return [available[i * share:(i + 1) * share] for i in range(workers)]


@dataclass(frozen=True)
class WorkerProcess:
    index: int
    process: subprocess.Popen
    log_path: Path


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
    pin_cores: bool | list[list[int]] = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    poll: float = 0.5,
) -> dict[str, Any]:
    """Run one training as ``workers`` local processes and return the chief's result.

    Args:
        request: What every worker trains (see :func:`run_worker`); written to ``run_dir``.
        workers: Number of processes. With 1, the process has no ``TF_CONFIG``: a fresh
            process for a strategy that must configure devices before TensorFlow starts.
        run_dir: Request, per-worker logs (``worker-<i>.log``) and the chief's result.
        pin_cores: Give each worker its own disjoint set of cores (True: split them evenly),
            or the cores of each worker.
        env: Extra environment for the workers.
        timeout: Seconds before every worker is stopped and :class:`TimeoutError` raised.

    Raises:
        WorkerFailed: A worker exited non-zero; the others were stopped.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / RESULT_FILE
    result_path.unlink(missing_ok=True)
    request_path = run_dir / "request.json"
    request_path.write_text(json.dumps({**request, "result_path": str(result_path)}, indent=2))
    configs = tf_configs([f"127.0.0.1:{p}" for p in free_ports(workers)]) if workers > 1 else [None]
    if isinstance(pin_cores, list):
        if len(pin_cores) != workers:
            raise ValueError(f"pin_cores names {len(pin_cores)} core sets for {workers} workers")
        cores = pin_cores
    else:
        cores = core_sets(workers) if pin_cores else [[] for _ in range(workers)]
    base_env = {**os.environ, **(env or {})}
    base_env.pop("TF_CONFIG", None)
    started: list[WorkerProcess] = []
    try:
        for index, config in enumerate(configs):
            worker_env = dict(base_env)
            if config is not None:
                worker_env["TF_CONFIG"] = json.dumps(config)
            if cores[index]:
                # Compute threads for the worker's cores. Inter-op threads mostly wait (collectives,
                # tf.data): with as few as the cores, one-core workers stalled for seconds at a time.
                worker_env["TF_NUM_INTRAOP_THREADS"] = str(len(cores[index]))
                worker_env["TF_NUM_INTEROP_THREADS"] = str(max(4, 2 * len(cores[index])))
            log_path = run_dir / f"worker-{index}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "tasks.launcher", "worker", str(request_path)],
                    env=worker_env, stdout=log_file, stderr=subprocess.STDOUT,
                    preexec_fn=(lambda c=tuple(cores[index]): os.sched_setaffinity(0, c)) if cores[index] else None,
                )
            started.append(WorkerProcess(index, process, log_path))
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            codes = [w.process.poll() for w in started]
            failed = [w for w, code in zip(started, codes) if code not in (None, 0)]
            if failed:
                worker = failed[0]
                code = worker.process.returncode
                _stop(started)
                raise WorkerFailed(
                    f"training worker {worker.index} of {workers} exited with status {code}; "
                    f"the other workers were stopped. End of {worker.log_path}:\n{_tail(worker.log_path)}",
                    code,
                )
            if all(code == 0 for code in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                _stop(started)
                raise TimeoutError(f"training workers still running after {timeout:.0f} s; stopped")
            time.sleep(poll)
    except BaseException:
        _stop(started)
        raise
    if not result_path.is_file():
        raise WorkerFailed(f"the chief exited without writing {result_path}; see {started[0].log_path}", 1)
    return json.loads(result_path.read_text())


def run_worker(request_path: Path) -> int:
    """One worker: train as the request says, the chief writing the result (``TF_CONFIG`` from the environment)."""
    import logging

    from tasks.config import TrainConfig
    from tasks.model import ModelSpec
    from tasks.train import WorkerRole, train_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    request = json.loads(Path(request_path).read_text())
    tf_config = os.environ.get("TF_CONFIG")
    role = WorkerRole.from_tf_config(tf_config)
    tracking = request.get("tracking") or None
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
        )
    if role.is_chief and request.get("result_path"):
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        Path(request["result_path"]).write_text(json.dumps({**result.to_dict(), "peak_rss_mb": round(peak_mb, 1)}))
    return 0


def tfjob_manifest(name: str, image: str, workers: int, request_uri: str, *, namespace: str = "default",
                   cpu: str = "4", memory: str = "16Gi", gpus: int = 0) -> dict[str, Any]:
    """A Kubeflow training-operator ``TFJob`` running the same worker entry point as pods.

    The operator creates one pod per replica, a headless service per pod, and sets each
    pod's ``TF_CONFIG`` (the cluster of ``<job>-worker-<i>.<namespace>.svc:2222``); worker 0
    is the chief. ``request_uri`` is the request JSON on storage every pod can read (S3).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    resources: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = gpus
    container = {
        "name": "tensorflow",  # the container name the operator looks for
        "image": image,
        "command": ["python", "-m", "tasks.launcher", "worker", request_uri],
        "ports": [{"name": "tfjob-port", "containerPort": 2222}],
        "envFrom": [{"secretRef": {"name": "tfpipe-env"}}],
        "resources": resources,
    }
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "tfpipe"}},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3},
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": workers,
                    "restartPolicy": "OnFailure",
                    "template": {"spec": {"containers": [container]}},
                }
            },
        },
    }


def expected_tfjob_tf_configs(name: str, workers: int, namespace: str = "default") -> list[dict[str, Any]]:
    """The ``TF_CONFIG`` each pod of :func:`tfjob_manifest` receives from the operator."""
    addresses = [f"{name}-worker-{i}.{namespace}.svc:2222" for i in range(workers)]
    return tf_configs(addresses)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "worker":
        print("usage: python -m tasks.launcher worker REQUEST.json", file=sys.stderr)
        return 2
    request = args[1]
    if "://" in request:  # a pod reads its request from shared storage
        from tasks import storage

        local = Path("/tmp") / "tfpipe-request.json"
        local.write_bytes(storage.read_bytes(request))
        request = str(local)
    return run_worker(Path(request))


if __name__ == "__main__":
    sys.exit(main())
