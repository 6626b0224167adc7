"""The production profile on one machine, without Docker, as a team runs it on several:

* PostgreSQL: Airflow's metadata database and MLflow's tracking store (one role each);
* Redis: the Celery broker and result backend;
* S3 (moto's server): the artifact root, the model store, MLflow's artifacts, Airflow's task logs;
* an MLflow tracking server on PostgreSQL, proxying artifacts to S3;
* Airflow 3 with CeleryExecutor: api-server (FAB auth manager), scheduler, dag-processor,
  triggerer, and two Celery workers, each with its own ``TFPIPE_HOME`` and Airflow home (its
  local disk); task logs go to S3 so the api-server reads every worker's;
* the AWS connection ``aws_default`` of the Amazon provider's type, added through the REST API;
* ``tfpipe serving-sync`` keeping a local TF Serving model folder in step with the store.

Each service gets only what it needs: the workers get no database URL and no AWS variables
(their S3 access is the connection, read through the execution API), the scheduler and the
dag-processor no S3 credentials; only the MLflow server holds the keys for MLflow's artifacts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.airflow_api import Api
from tests.production.services import mlflow_tracking_server, postgres_server, redis_server, s3_server, _stop
from tests.servers import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
BUCKET, LOGS_BUCKET, MLFLOW_BUCKET = "tfpipe", "airflow-logs", "mlflow"
QUICK = {"optimize": {"variants": ["tflite_float32"], "latency_runs": 10, "throughput_batch": 64}}
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
WORKERS = ("worker-a", "worker-b")


@dataclass
class Profile:
    root: Path
    api: Api
    tracking_uri: str
    s3_endpoint: str
    s3_credentials: dict[str, str]
    serving_dir: Path
    password: str  # the FAB admin's
    envs: dict[str, dict[str, str]]  # service -> its environment
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def worker_home(self, worker: str) -> Path:
        return self.root / worker / "tfpipe"

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id=self.s3_credentials["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.s3_credentials["AWS_SECRET_ACCESS_KEY"])


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW", "MLFLOW_", "TFPIPE_"))}


def _dags_folder(root: Path) -> Path:
    """A copy of the project's DAGs whose penguins pipeline runs when triggered only, trains until
    its last epoch and builds one TFLite variant (the profile tests the deployment)."""
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    config = yaml.safe_load((dags / "pipelines" / "penguins.yaml").read_text())
    config.update(QUICK, schedule=None)
    config["train"]["early_stopping"] = {"patience": None}
    (dags / "pipelines" / "penguins.yaml").write_text(yaml.safe_dump(config))
    return dags


def _environments(root: Path, dags: Path, db_url: str, broker: str, api_url: str, tracking_uri: str,
                  s3_endpoint: str, s3_credentials: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each service's environment, with only the settings and secrets it needs."""
    shared = {  # what every Airflow component reads
        **_clean_environment(),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": FAB,
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": broker[:-1] + "1",  # Redis too: workers never see the database
        # A message a lost worker held comes back after this long; Airflow's own heartbeat timeout
        # retries the task long before (the default, 24 h, is the same, but unset it is warned about).
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "86400",
        "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
        "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": f"s3://{LOGS_BUCKET}/logs",
        "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": "aws_default",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "TFPIPE_PIPELINES_DIR": str(dags / "pipelines"),
        "TFPIPE_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
        "TFPIPE_MODEL_STORE": f"s3://{BUCKET}/store",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TFPIPE_MLFLOW_UI_URL": tracking_uri,
    }
    database = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url}
    secrets_ = {"AIRFLOW__CORE__FERNET_KEY": _fernet_key(), "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32)}
    control = {**shared, **database, "AIRFLOW_HOME": str(root / "airflow")}
    envs = {
        "migrate": {**control, **secrets_},
        "api-server": {**control, **secrets_},
        "scheduler": {**control, "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["AIRFLOW__API_AUTH__JWT_SECRET"],
                      "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60"},
        "dag-processor": {**control, "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["AIRFLOW__API_AUTH__JWT_SECRET"]},
        "triggerer": {**control, "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["AIRFLOW__API_AUTH__JWT_SECRET"]},
    }
    for worker in WORKERS:
        envs[worker] = {**shared, "AIRFLOW_HOME": str(root / worker / "airflow"),
                        "TFPIPE_HOME": str(root / worker / "tfpipe")}
    envs["serving-sync"] = {**_clean_environment(), "TFPIPE_MODEL_STORE": shared["TFPIPE_MODEL_STORE"],
                            "AWS_ENDPOINT_URL": s3_endpoint, **s3_credentials}
    return envs


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


@contextmanager
def _service(name: str, args: list[str], env: dict[str, str], logs: Path, processes: dict):
    log = (logs / f"{name}.log").open("w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    processes[name] = proc
    try:
        yield proc
    finally:
        _stop(proc, signal.SIGTERM, timeout=60)
        log.close()


def _migrate(env: dict[str, str], password: str) -> None:
    airflow = str(BIN / "airflow")
    migrated = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=900)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    created = subprocess.run([airflow, "users", "create", "--username", "admin", "--role", "Admin", "--firstname",
                              "Ada", "--lastname", "Admin", "--email", "admin@example.org", "--password", password],
                             env=env, capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-2000:]


def _add_aws_connection(api: Api, endpoint: str, credentials: dict[str, str]) -> None:
    """The connection a user adds in the UI's AWS form (REST here): keys and the S3 endpoint."""
    import json

    api.call("POST", "/api/v2/connections", {
        "connection_id": "aws_default", "conn_type": "aws",
        "login": credentials["AWS_ACCESS_KEY_ID"], "password": credentials["AWS_SECRET_ACCESS_KEY"],
        "extra": json.dumps({"endpoint_url": endpoint, "region_name": credentials["AWS_DEFAULT_REGION"]}),
    })


@contextmanager
def production_profile(root: Path):
    """Start the whole profile under ``root``; yields a :class:`Profile`; stops everything."""
    logs = root / "logs"
    logs.mkdir(parents=True)
    with ExitStack() as stack:
        pg = stack.enter_context(postgres_server(("airflow", "mlflow")))
        broker = stack.enter_context(redis_server(root / "redis"))
        endpoint, credentials = stack.enter_context(s3_server(root / "s3", (BUCKET, LOGS_BUCKET, MLFLOW_BUCKET)))
        tracking_uri = stack.enter_context(mlflow_tracking_server(
            root / "mlflow", pg.url("mlflow", "postgresql+psycopg2"), f"s3://{MLFLOW_BUCKET}/artifacts",
            {"AWS_ENDPOINT_URL": endpoint, **credentials}))
        port, password = free_port(), secrets.token_urlsafe(16)
        api_url = f"http://127.0.0.1:{port}"
        envs = _environments(root, _dags_folder(root), pg.url("airflow", "postgresql+psycopg2"), broker, api_url,
                             tracking_uri, endpoint, credentials)
        _migrate(envs["migrate"], password)
        processes: dict[str, subprocess.Popen] = {}
        airflow = str(BIN / "airflow")
        api_server = stack.enter_context(_service(
            "api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)], envs["api-server"],
            logs, processes))
        wait_http(f"{api_url}/api/v2/monitor/health", timeout=300, proc=api_server)
        api = Api(api_url, password)
        _add_aws_connection(api, endpoint, credentials)
        for name, args in (("scheduler", ["scheduler"]), ("dag-processor", ["dag-processor"]),
                           ("triggerer", ["triggerer"])):
            stack.enter_context(_service(name, [airflow, *args], envs[name], logs, processes))
        for worker in WORKERS:
            (root / worker / "airflow").mkdir(parents=True)
            stack.enter_context(_service(worker, [airflow, "celery", "worker", "--celery-hostname", f"{worker}@%h",
                                                  "--concurrency", "2", "--skip-serve-logs"],
                                         envs[worker], logs, processes))
        serving_dir = root / "serving"
        stack.enter_context(_service("serving-sync", [str(BIN / "tfpipe"), "serving-sync", str(serving_dir),
                                                      "--interval", "2"], envs["serving-sync"], logs, processes))
        yield Profile(root, api, tracking_uri, endpoint, credentials, serving_dir, password, envs, processes)
