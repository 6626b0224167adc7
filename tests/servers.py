"""Real services on 127.0.0.1 for integration tests; each is stopped by the fixture that started it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextmanager
def moto_s3():
    """A real S3 HTTP endpoint (moto) for boto3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started in a session of its own, with every process it started."""
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


@contextmanager
def mlflow_server(workdir: Path):
    """A real ``mlflow server`` subprocess: SQLite backend, artifacts proxied to a local folder."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / "mlflow-server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
         "--artifacts-destination", str(workdir / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_group(proc)
        log.close()


@contextmanager
def tensorboard(logdir: Path):
    """A real ``tensorboard`` subprocess (with this project's plugins) over ``logdir``, on 127.0.0.1."""
    port = free_port()
    log = (logdir.parent / "tensorboard-server.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=120, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop_group(proc)
        log.close()


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]):
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def http_folder(root: Path):
    """A folder served over HTTP on 127.0.0.1 (Python's file server, listings included)."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

    with _serve(functools.partial(Quiet, directory=str(root))) as url:
        yield url


@contextmanager
def model_server(models_config: Path):
    """TensorFlow Serving's REST API (model status and ``:predict``) on 127.0.0.1, over the real
    SavedModels that ``models_config`` points at.

    The ``tensorflow_model_server`` binary is distributed neither on PyPI nor in Debian, so the
    tests cannot start it here; this server follows its contract for what tfpipe uses: it
    rereads the config on each request (as the real one polls it), serves only the versions
    its ``specific`` policy names, reports them AVAILABLE once loaded, and answers
    ``serving_default`` on base64 ``examples``.
    """
    import tensorflow as tf

    from tasks.release.models_config import parse_models_config

    loaded: dict[tuple[str, int], object] = {}
    lock = threading.Lock()

    def served(name: str, version: int):
        text = models_config.read_text() if models_config.is_file() else ""
        entries = parse_models_config(text) if text else {}
        if name not in entries or version not in entries[name][1]:
            return None
        with lock:
            if (name, version) not in loaded:
                path = Path(entries[name][0]) / str(version)
                loaded[(name, version)] = tf.saved_model.load(str(path)).signatures["serving_default"]
            return loaded[(name, version)]

    class Handler(_QuietHandler):
        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            match = re.fullmatch(r"/v1/models/([^/]+)/versions/(\d+)(:predict)?", self.path)
            return (match.group(1), int(match.group(2)), bool(match.group(3))) if match else None

        def do_GET(self):
            route = self._route()
            if route is None or route[2]:
                return self._reply(404, {"error": "Malformed request"})
            name, version, _ = route
            if served(name, version) is None:
                return self._reply(404, {"error": f"Servable not found for request: Specific({name}, {version})"})
            self._reply(200, {"model_version_status": [
                {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})

        def do_POST(self):
            route = self._route()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if route is None or not route[2]:
                return self._reply(404, {"error": "Malformed request"})
            signature = served(route[0], route[1])
            if signature is None:
                return self._reply(404, {"error": f"Servable not found for request: Specific({route[0]}, {route[1]})"})
            records = [base64.b64decode(item["b64"]) for item in body["inputs"]["examples"]]
            outputs = signature(examples=tf.constant(records))
            self._reply(200, {"outputs": {
                key: np.vectorize(lambda v: v.decode(), otypes=[str])(value.numpy()).tolist()
                if value.dtype == tf.string else value.numpy().tolist()
                for key, value in outputs.items()}})

    with _serve(Handler) as url:
        yield url


@contextmanager
def failing_s3_proxy(endpoint: str, fail_when):
    """An S3 endpoint in front of ``endpoint`` that breaks uploads mid-way: for a ``PUT`` whose
    path ``fail_when(path)`` accepts, it reads part of the body, then drops the connection
    without answering. Everything else is forwarded."""
    with faulty_s3_proxy(endpoint, lambda method, path: "cut" if method == "PUT" and fail_when(path) else None) as url:
        yield url


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


@contextmanager
def faulty_s3_proxy(endpoint: str, fault, hang_seconds: float = 5.0):
    """An S3 endpoint in front of ``endpoint`` that misbehaves where ``fault(method, path)`` says:

    * ``"cut"``: read half the request's body, then drop the connection without answering;
    * ``"503"``: answer ``503 SlowDown`` without forwarding;
    * ``"hang"``: answer nothing for ``hang_seconds``, then drop the connection;
    * ``"lose"``: forward the request (the write happens), then drop the connection instead of answering;
    * ``"ignore-conditions"``: forward without ``If-Match``/``If-None-Match`` (an endpoint that ignores them);
    * None: forward it.
    """
    target = urllib.parse.urlparse(endpoint)

    class Handler(_QuietHandler):
        protocol_version = "HTTP/1.1"

        def _drop(self):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            action = fault(self.command, self.path)
            if action == "cut":
                self.rfile.read(length // 2)
                return self._drop()
            body = self.rfile.read(length) if length else None
            if action == "503":
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                return
            if action == "hang":
                time.sleep(hang_seconds)
                return self._drop()
            dropped = ("host", "connection") + (("if-match", "if-none-match") if action == "ignore-conditions" else ())
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            if action == "lose":
                return self._drop()
            self.send_response(response.status)
            head = self.command == "HEAD"  # no body, but the object's own Content-Length
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection") and (head or key.lower() != "content-length"):
                    self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    with _serve(Handler) as url:
        yield url


class Switch:
    """How :func:`switchable_proxy` treats requests now: ``"up"`` (forwarded), ``"down"`` (the
    connection is closed at once, as by a server that is gone) or ``"hang"`` (no answer, ever)."""

    def __init__(self) -> None:
        self.mode = "up"
        self.url = ""


@contextmanager
def switchable_proxy(target_url: str):
    """An HTTP proxy in front of ``target_url`` (an MLflow server) that can be taken down or made to
    hang while a test runs: ``with switchable_proxy(url) as switch: switch.mode = "down"``."""
    target = urllib.parse.urlparse(target_url)
    switch = Switch()
    release = threading.Event()

    class Handler(_QuietHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self):
            if switch.mode == "hang":
                release.wait(120)
            if switch.mode != "up":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            conn.close()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _forward

    with _serve(Handler) as url:
        switch.url = url
        try:
            yield switch
        finally:
            release.set()
