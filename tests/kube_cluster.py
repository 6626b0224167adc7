"""A Kubernetes API server and kubelet for Jobs on 127.0.0.1, for the tests of
``train.runner: kubernetes`` on machines that have no cluster.

It serves what tfpipe and Airflow's cncf.kubernetes provider call, through the real
``kubernetes`` and ``kubernetes_asyncio`` clients over HTTP: Services and Jobs created, read,
listed by label and deleted. It runs a Job's pods as processes with the environment a pod
gets: the container's env, the Indexed Job's completion index, the Secret of ``envFrom`` (given
here), a temporary folder of its own, and the cluster's addresses rewritten to local ports (the
pods' DNS names resolve only in a cluster). A failed container restarts in its pod
(``restartPolicy: OnFailure``) until the Job's ``backoffLimit``; then the Job fails, and a Job
succeeds when every index has (or index 0, under a ``successPolicy``), as the Job controller does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tasks.training.kubernetes import CLUSTER_ENV, INDEX_ENV
from tasks.training.launcher import free_ports

REPO = Path(__file__).resolve().parents[1]
_ROUTE = re.compile(r"^/(?:api/v1|apis/batch/v1)/namespaces/([^/]+)/(services|jobs)(?:/([^/]+))?(?:/status)?$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Pod:
    """One index of a Job: its container's process, started again when it fails."""

    def __init__(self, job: "JobRun", index: int) -> None:
        self.job, self.index, self.attempts, self.proc = job, index, 0, None

    def start(self) -> None:
        self.attempts += 1
        folder = self.job.folder / f"pod-{self.index}-{self.attempts}"
        (folder / "tmp").mkdir(parents=True)
        command = [sys.executable if word == "python" else word for word in self.job.container["command"]]
        env = {**self.job.env, INDEX_ENV: str(self.index), "TMPDIR": str(folder / "tmp")}
        log = (folder / "log.txt").open("w")
        self.proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


class JobRun:
    """A Job's pods and status, kept by a thread as the Job controller and kubelets would."""

    def __init__(self, manifest: dict, folder: Path, secret: dict[str, str]) -> None:
        self.manifest, self.folder = manifest, folder
        spec = manifest["spec"]
        self.container = spec["template"]["spec"]["containers"][0]
        self.env = self._environment(secret)
        self.pods = [Pod(self, i) for i in range(spec["completions"])]
        self.backoff_limit = spec.get("backoffLimit", 6)
        self.index_zero_ends_it = "successPolicy" in spec
        self.deleted = threading.Event()
        manifest["status"] = {"startTime": _now(), "active": len(self.pods)}
        threading.Thread(target=self._run, daemon=True).start()

    def _environment(self, secret: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", CLUSTER_ENV)}
        env.update(secret)
        env.update({e["name"]: e["value"] for e in self.container.get("env", []) if "value" in e})
        if CLUSTER_ENV in env:  # <job>-<i>.<service>.<namespace>.svc:2222 -> 127.0.0.1:<free port>
            layout = json.loads(env[CLUSTER_ENV])
            count = sum(len(addresses) for addresses in layout.values())
            ports = iter(free_ports(count))
            env[CLUSTER_ENV] = json.dumps({role: [f"127.0.0.1:{next(ports)}" for _ in addresses]
                                           for role, addresses in layout.items()})
        return env

    def _run(self) -> None:
        for pod in self.pods:
            pod.start()
        failures, succeeded = 0, set()
        while not self.deleted.wait(0.3):
            for pod in self.pods:
                code = pod.proc.poll() if pod.index not in succeeded else None
                if code == 0:
                    succeeded.add(pod.index)
                elif code is not None:
                    failures += 1
                    if failures <= self.backoff_limit:
                        pod.start()
            done = succeeded == set(range(len(self.pods))) or (self.index_zero_ends_it and 0 in succeeded)
            status = {"startTime": self.manifest["status"]["startTime"], "succeeded": len(succeeded),
                      "failed": failures, "active": sum(p.proc.poll() is None for p in self.pods)}
            if failures > self.backoff_limit or done:
                failed = not done
                status["conditions"] = [{
                    "type": "Failed" if failed else "Complete", "status": "True", "lastTransitionTime": _now(),
                    **({"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
                       if failed else {}),
                }]
                status["active"] = 0
                self.stop()
                self.manifest["status"] = status
                return
            self.manifest["status"] = status

    def stop(self) -> None:
        for pod in self.pods:
            pod.stop()


class Cluster:
    """The API server's objects and the Jobs' pods."""

    def __init__(self, folder: Path, secret: dict[str, str]) -> None:
        self.folder, self.secret = folder, secret
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> object
        self.runs: dict[tuple[str, str], JobRun] = {}
        self.created: list[str] = []  # "<kind>/<namespace>/<name>", in order
        self.deleted: list[str] = []
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        match = _ROUTE.match(path)
        if not match:
            return 404, _status(404, f"no route {path}")
        namespace, kind, name = match.groups()
        with self.lock:
            if method == "POST":
                return self._create(kind, namespace, body)
            if method == "GET" and name is None:
                return 200, self._list(kind, namespace, query.get("labelSelector", [""])[0])
            found = self.objects.get((kind, namespace, name))
            if found is None:
                return 404, _status(404, f'{kind} "{name}" not found', "NotFound")
            if method == "DELETE":
                del self.objects[(kind, namespace, name)]
                self.deleted.append(f"{kind}/{namespace}/{name}")
                if kind == "jobs":
                    run = self.runs.pop((namespace, name))
                    run.deleted.set()
                    run.stop()
                return 200, _status(200, "deleted", status="Success")
            return 200, found

    def _create(self, kind: str, namespace: str, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            return 409, _status(409, f'{kind} "{name}" already exists', "AlreadyExists")
        body["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now(), namespace=namespace)
        self.objects[(kind, namespace, name)] = body
        self.created.append(f"{kind}/{namespace}/{name}")
        if kind == "jobs":
            self.runs[(namespace, name)] = JobRun(body, self.folder / name, self.secret)
        return 201, body

    def _list(self, kind: str, namespace: str, selector: str) -> dict:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        items = [obj for (k, ns, _), obj in self.objects.items() if k == kind and ns == namespace
                 and all(obj["metadata"].get("labels", {}).get(key) == value for key, value in wanted.items())]
        return {"kind": "JobList" if kind == "jobs" else "ServiceList",
                "apiVersion": "batch/v1" if kind == "jobs" else "v1", "metadata": {}, "items": items}

    def job(self, namespace: str, name: str) -> JobRun | None:
        return self.runs.get((namespace, name))

    def stop(self) -> None:
        for run in list(self.runs.values()):
            run.deleted.set()
            run.stop()


def _status(code: int, message: str, reason: str = "", status: str = "Failure") -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status, "message": message,
            "reason": reason, "code": code}


def _handler(cluster: Cluster):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            code, payload = cluster.handle(method, url.path, parse_qs(url.query), body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 -- http.server's names
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._serve("DELETE")

        def log_message(self, *args) -> None:
            pass

    return Handler


@contextmanager
def kube_cluster(folder: Path, secret: dict[str, str]):
    """Yield ``(cluster, kubeconfig path)``; everything it started is stopped on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(folder, secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(cluster))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
    }))
    try:
        yield cluster, kubeconfig
    finally:
        cluster.stop()
        server.shutdown()
        server.server_close()


def wait_for(what, timeout: float, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"gave up after {timeout}s")
