"""The production profile's servers, started natively on 127.0.0.1 (no Docker): PostgreSQL,
Redis, an S3 endpoint (moto's server, in its own process) and an MLflow tracking server on
PostgreSQL with its artifacts on S3. Each context manager stops what it started.

PostgreSQL and Redis are Debian's packages (``make production-deps``). PostgreSQL refuses to run
as root, so when the suite runs as root its server runs as the ``postgres`` user that Debian's
package creates, in a folder of its own outside pytest's private temporary folders.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, wait_http

BIN = Path(sys.executable).parent


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s:\n{log.read_text()[-3000:]}")


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program from Debian's package (not on PATH by default)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name) else [])
    return found[-1] if found else None


@dataclass(frozen=True)
class Postgres:
    port: int
    users: dict[str, str]  # role -> password; each role owns the database of the same name

    def url(self, role: str, driver: str = "postgresql") -> str:
        return f"{driver}://{role}:{self.users[role]}@127.0.0.1:{self.port}/{role}"


@contextmanager
def postgres_server(roles: tuple[str, ...]):
    """A PostgreSQL server with one database per role, each owned by its role (password auth)."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="tfpipe-postgres-"))
    try:
        if as_postgres:
            shutil.chown(folder, "postgres")
        data, log = folder / "data", folder / "server.log"
        pwfile = folder / "pw"
        admin = secrets.token_urlsafe(16)
        pwfile.write_text(admin)
        if as_postgres:
            shutil.chown(pwfile, "postgres")
        subprocess.run([*as_postgres, postgres_bin("initdb"), "-D", str(data), "-U", "admin", "--pwfile", str(pwfile),
                        "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        port = free_port()
        with log.open("w") as out:
            proc = subprocess.Popen([*as_postgres, postgres_bin("postgres"), "-D", str(data), "-p", str(port),
                                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
                                     "-c", "max_connections=200", "-c", "fsync=off"],
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_port(port, proc, 60, log)
            users = {role: secrets.token_urlsafe(16) for role in roles}
            env = {**os.environ, "PGPASSWORD": admin}
            for role, password in users.items():
                for sql in (f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", f"CREATE DATABASE {role} OWNER {role}"):
                    _psql(port, env, sql)
            yield Postgres(port, users)
        finally:
            _stop(proc, signal.SIGINT)  # PostgreSQL's fast shutdown
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _psql(port: int, env: dict[str, str], sql: str) -> None:
    for attempt in range(30):  # the server accepts connections a moment after it listens
        done = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "admin", "-d", "postgres",
                               "-v", "ON_ERROR_STOP=1", "-c", sql], env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
        if "starting up" not in done.stderr:
            raise RuntimeError(f"psql failed: {done.stderr}")
        time.sleep(0.5)
    raise RuntimeError(f"PostgreSQL did not finish starting: {done.stderr}")


@contextmanager
def redis_server(workdir: Path):
    """A Redis server with a password and no persistence: the Celery broker. Yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, password, log = free_port(), secrets.token_urlsafe(16), workdir / "redis.log"
    conf = workdir / "redis.conf"  # the password in a file, not on the command line
    conf.write_text(f"bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave \"\"\nappendonly no\n"
                    f"dir {workdir}\nprotected-mode yes\n")
    conf.chmod(0o600)
    with log.open("w") as out:
        proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, proc, 30, log)
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@contextmanager
def s3_server(workdir: Path, buckets: tuple[str, ...]):
    """moto's S3 server in its own process (so the suite's own work does not slow it), with
    ``buckets`` made. Yields the endpoint and the credentials its clients use."""
    import boto3

    workdir.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), workdir / "s3.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
        credentials = {"AWS_ACCESS_KEY_ID": "tfpipe" + secrets.token_hex(6),
                       "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24), "AWS_DEFAULT_REGION": "us-east-1"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"])
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint, credentials
    finally:
        _stop(proc)


@contextmanager
def mlflow_tracking_server(workdir: Path, backend_uri: str, artifacts: str, s3_env: dict[str, str]):
    """``mlflow server`` on PostgreSQL, proxying artifacts to S3: only this server holds the S3
    credentials for them; clients log artifacts through it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, log = free_port(), workdir / "mlflow-server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "AIRFLOW", "TFPIPE_"))}
    env.update(s3_env, MLFLOW_S3_ENDPOINT_URL=s3_env["AWS_ENDPOINT_URL"])
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
             "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)
