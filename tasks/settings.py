"""Where tfpipe keeps its state: bound from the environment at the edge (CLI, DAGs, tests).

Library functions never read the environment; they receive a :class:`Settings`.

* ``TFPIPE_HOME``: all local state (default ``<repo>/.tfpipe``).
* ``TFPIPE_PIPELINES_DIR``: the pipeline YAML files, one DAG each (default ``<repo>/dags/pipelines``
  in a source checkout, else ``$TFPIPE_HOME/pipelines``).
* ``TFPIPE_ARTIFACT_ROOT``: pipeline artifacts, a local path or ``s3://`` (default
  ``$TFPIPE_HOME/artifacts``).
* ``TFPIPE_MODEL_STORE``: the serving model store, a local path or ``s3://`` (default
  ``$TFPIPE_HOME/model_store``).
* ``MLFLOW_TRACKING_URI``: any MLflow tracking server or store (default
  ``sqlite:///$TFPIPE_HOME/mlflow/mlflow.db``).
* ``TFPIPE_SERVING_URL``: TensorFlow Serving's REST address. When set, a push (and a rollback)
  waits until the server reports the new champion AVAILABLE and queries it (default: unset,
  no server check).
* ``TFPIPE_SERVING_BASE_PATH``: where TensorFlow Serving sees the store, written into
  ``<store>/models.config`` (default: a local store's own path, else ``/models``).
* ``TFPIPE_MLFLOW_UI_URL``: the MLflow UI that links point to (default: the tracking URI when
  it is a server, else ``http://127.0.0.1:5000``, where ``make mlflow`` serves).
* ``AIRFLOW__API__BASE_URL``: Airflow's UI, for the links from MLflow runs back to their DAG
  run and task instance (default: unset, no links).

S3 endpoint and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) which boto3 reads itself; under Airflow, from the connection
``aws_default`` when those are unset.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# XCom keys a task pushes so the Airflow UI can link to its MLflow run (dags/ push them, plugins/ read them).
MLFLOW_RUN_URL = "mlflow_run_url"
MLFLOW_EXPERIMENT_URL = "mlflow_experiment_url"

_PACKAGE_DIR = Path(__file__).resolve().parent
# Every variable Settings.from_env reads (a deployment must provide those it needs: docker/compose.yaml).
ENVIRONMENT = ("TFPIPE_HOME", "TFPIPE_PIPELINES_DIR", "TFPIPE_ARTIFACT_ROOT", "TFPIPE_MODEL_STORE", "MLFLOW_TRACKING_URI",
               "TFPIPE_SERVING_URL", "TFPIPE_SERVING_BASE_PATH", "TFPIPE_MLFLOW_UI_URL", "AIRFLOW__API__BASE_URL")


def default_home() -> Path:
    """``.tfpipe`` in the source checkout when running from one, else ``~/.tfpipe``."""
    repo = _PACKAGE_DIR.parent
    if (repo / "pyproject.toml").is_file():
        return repo / ".tfpipe"
    return Path.home() / ".tfpipe"


def default_pipelines_dir(home: Path) -> Path:
    """``dags/pipelines`` beside this package when it is there (a checkout, the image), else
    ``<home>/pipelines``."""
    shipped = _PACKAGE_DIR.parent / "dags" / "pipelines"
    return shipped if shipped.is_dir() else home / "pipelines"


@dataclass(frozen=True)
class Settings:
    """Locations of every piece of state; see the module docstring."""

    home: Path
    artifact_root: str
    model_store: str
    tracking_uri: str
    serving_url: str | None = None
    serving_base_path: str | None = None
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    airflow_url: str | None = None
    pipelines_dir: Path | None = None  # where pipeline names are looked up (None: only paths to YAML files)

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Artifact location for new experiments on the embedded store; a server decides its own."""
        if self.tracking_uri.startswith(("sqlite:", "file:")) or "://" not in self.tracking_uri:
            return (self.mlflow_dir / "artifacts").as_uri()
        return None

    @property
    def cache_dir(self) -> Path:
        """Local copies of remote artifacts (TensorFlow cannot read ``s3://`` itself)."""
        return self.home / "cache"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("TFPIPE_HOME") or default_home()).expanduser().resolve()
        return cls(
            home=home,
            artifact_root=env.get("TFPIPE_ARTIFACT_ROOT") or str(home / "artifacts"),
            model_store=env.get("TFPIPE_MODEL_STORE") or str(home / "model_store"),
            tracking_uri=env.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
            serving_url=env.get("TFPIPE_SERVING_URL") or None,
            serving_base_path=env.get("TFPIPE_SERVING_BASE_PATH") or None,
            mlflow_ui_url=(env.get("TFPIPE_MLFLOW_UI_URL") or _server(env.get("MLFLOW_TRACKING_URI"))
                           or "http://127.0.0.1:5000").rstrip("/"),
            airflow_url=(env.get("AIRFLOW__API__BASE_URL") or "").rstrip("/") or None,
            pipelines_dir=Path(env.get("TFPIPE_PIPELINES_DIR") or default_pipelines_dir(home)).expanduser().resolve(),
        )


def redact(uri: str | None) -> str | None:
    """A URI without the user and password it may carry (``http://user:pw@host`` to
    ``http://host``): what may be written to files, MLflow and logs. Credentials belong in the
    environment (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, the AWS variables) or in Airflow
    connections."""
    if not uri or "@" not in uri.split("/")[2 if "://" in uri else 0]:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    return f"{scheme}://{authority.rsplit('@', 1)[1]}{sep}{path}"


def tracking_uri_for_worker(written: str) -> str:
    """The tracking URI a worker uses: its environment's when that is the same server (it may
    carry credentials that files never hold), else the one its request names."""
    own = os.environ.get("MLFLOW_TRACKING_URI")
    return own if own and redact(own) == written else written


def _server(tracking_uri: str | None) -> str | None:
    return tracking_uri if tracking_uri and tracking_uri.startswith(("http://", "https://")) else None


def usable_cpus() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a container's cpuset),
    which ``os.cpu_count()`` (every core of the machine) ignores."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # platforms without affinity
        return os.cpu_count() or 1


# SQLite lets one writer in at a time and makes the others wait 5 s by default; a scheduler busy
# on a loaded machine holds the lock longer, and `airflow backfill create` beside it then failed
# with "database is locked". Airflow reads this by import path ([database] sql_alchemy_connect_args).
SQLITE_CONNECT_ARGS = {"timeout": 60}


def _metadata_is_sqlite(env: Mapping[str, str]) -> bool:
    """Whether Airflow's metadata database is SQLite, its default, as far as the environment and
    ``$AIRFLOW_HOME/airflow.cfg`` say (a connection given by command or secret is taken as not)."""
    if any(env.get(f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN{suffix}") for suffix in ("_CMD", "_SECRET")):
        return False
    conn = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if conn is None and env.get("AIRFLOW_HOME"):
        import configparser

        parser = configparser.ConfigParser(interpolation=None)
        parser.read(Path(env["AIRFLOW_HOME"]) / "airflow.cfg")
        if parser.has_option("database", "sql_alchemy_conn_cmd") or parser.has_option("database", "sql_alchemy_conn_secret"):
            return False
        conn = parser.get("database", "sql_alchemy_conn", fallback=None)
    return conn is None or conn.startswith("sqlite")


def airflow_environment(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment under which Airflow runs this project's DAGs and plugins."""
    env = dict(os.environ if base is None else base)
    env.setdefault("TFPIPE_HOME", str(settings.home))
    env.setdefault("AIRFLOW_HOME", str(settings.airflow_home))
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_PACKAGE_DIR.parent / "dags"))
    env.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(_PACKAGE_DIR.parent / "plugins"))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__API__HOST", "127.0.0.1")
    env.setdefault("AIRFLOW__API__PORT", "8080")
    env.setdefault("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{env['AIRFLOW__API__PORT']}")
    env.setdefault("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "30")
    env.setdefault("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "120")
    if _metadata_is_sqlite(env):
        env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "tasks.settings.SQLITE_CONNECT_ARGS")
    # `airflow standalone` starts its components as plain `airflow ...` from PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    return env
