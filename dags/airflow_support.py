"""What every tfpipe DAG shares: default task arguments, how a task runs a step (failing fast
on bad data or config, logging at the right levels), and binding Airflow's connections.

Nothing here runs while Airflow parses DAG files: connections are read inside tasks only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from tasks.errors import UserError
from tasks.settings import MLFLOW_EXPERIMENT_URL, MLFLOW_RUN_URL, Settings

DEFAULT_ARGS = {
    "owner": "tfpipe",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
}


def tfpipe_step(step: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task's callable that runs tfpipe steps: what it logs keeps its level, and a
    :class:`~tasks.errors.UserError` fails the task at once.

    Bad data or config stays bad on a retry, so such a task fails without retries, with the
    error's message (Airflow's ``AirflowFailException``). Any other error (S3, MLflow, a lost
    worker) keeps the task's retries. Airflow logs every line a task writes to stderr as an
    error: MLflow's records go through Airflow's logging instead, and what libraries write to
    stderr is logged at the severity each line states (see :func:`stderr_at_its_own_level`).

    Args:
        step: The task's Python callable; apply this under ``@task``.

    Returns:
        The callable with the same name and signature (Airflow reads both).
    """

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        from tasks.tracking import log_through_root_logger

        log_through_root_logger()
        with stderr_at_its_own_level() if _stderr_read_by_airflow() else contextlib.nullcontext():
            try:
                return step(*args, **kwargs)
            except UserError as error:
                raise AirflowFailException(str(error)) from error

    return run


def _stderr_read_by_airflow() -> bool:
    """Whether descriptor 2 is the socket an Airflow supervisor reads (and logs at error level),
    with no log handler of this process writing to it: forwarding would then feed itself.
    ``dag.test()`` and ``airflow dags test`` leave the terminal's stderr alone."""
    if not stat.S_ISSOCK(os.fstat(2).st_mode):
        return False
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if os.path.sameopenfile(handler.stream.fileno(), 2):
                return False
    return True


# The severity C++ libraries write at the start of a line: TensorFlow's "2026-01-01
# 10:00:00.123456: W ...", absl's and glog's "W0101 10:00:00.123456 ...", TFLite's "WARNING: ...".
_SEVERITY = re.compile(r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) |([IWEF])\d{4} \d\d:\d\d:\d\d"
                       r"|(DEBUG|INFO|WARNING|ERROR|FATAL|CRITICAL):)")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL, "DEBUG": logging.DEBUG,
           "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR, "FATAL": logging.CRITICAL,
           "CRITICAL": logging.CRITICAL}


def stderr_level(line: str) -> int:
    """The logging level of a line written to stderr: the severity it states, else WARNING
    (stderr is for diagnostics, a notice such as TFDV's "Unable to import IPython")."""
    match = _SEVERITY.match(line)
    return _LEVELS[next(group for group in match.groups() if group)] if match else logging.WARNING


@contextlib.contextmanager
def stderr_at_its_own_level(poll_seconds: float = 0.2) -> Iterator[None]:
    """Log what this process (and its children) write to file descriptor 2 meanwhile, line by
    line at :func:`stderr_level`, through the ``stderr`` logger.

    C++ libraries write to the descriptor itself (TFLite's converter logs through absl, which
    no environment variable quiets), so it is pointed at an unlinked file that a thread follows:
    a write never blocks, whatever holds the GIL. A line written just before the process is
    killed may not reach the log; ``tfpipe run`` shows a step's stderr as it is.
    """
    logger = logging.getLogger("stderr")
    fd, path = tempfile.mkstemp(prefix="tfpipe-stderr-")
    follow = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, after the thread
    os.unlink(path)
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    done = threading.Event()
    thread = threading.Thread(target=_forward_lines, args=(follow, logger, done, poll_seconds), daemon=True,
                              name="tfpipe-stderr")
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        done.set()
        thread.join()
        follow.close()


def _forward_lines(follow, logger: logging.Logger, done: threading.Event, poll_seconds: float) -> None:
    pending = b""
    while True:
        finished = done.is_set()  # read once more after the last write
        chunk = follow.read()
        if chunk:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _log_line(logger, line)
        elif finished:
            _log_line(logger, pending)
            return
        else:
            done.wait(poll_seconds)


def _log_line(logger: logging.Logger, raw: bytes) -> None:
    line = raw.decode("utf-8", errors="replace").rstrip()
    if line:
        logger.log(stderr_level(line), "%s", line)


def safe_dag_id(name: str) -> str:
    """``name`` with every character that a ``dag_id`` does not allow replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:250] or "_"


def export_aws_connection(conn_id: str = "aws_default") -> None:
    """Bind the AWS connection ``conn_id`` to the standard AWS variables when those are unset, for
    tfpipe's S3 clients and the processes a task starts (training workers).

    With the Amazon provider installed (the ``production`` extra), its hook reads the connection
    as the provider's own operators do: keys, a session token, a profile, or a role to assume
    (whose temporary credentials are taken when the task starts, so the role's session must
    outlast the task), and the endpoint and region. Without it, the connection's login, password
    and the ``endpoint_url`` and ``region_name`` of its extra. Runs inside a task only (never
    while parsing), so the DAG processor makes no look-ups.
    """
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception:  # noqa: BLE001 - an absent connection leaves boto3's own chain
        return
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook
    except ImportError:
        extra = conn.extra_dejson or {}
        values = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
                  "AWS_ENDPOINT_URL": extra.get("endpoint_url"), "AWS_DEFAULT_REGION": extra.get("region_name")}
    else:
        values = _aws_from_hook(AwsGenericHook(aws_conn_id=conn_id, client_type="s3"))
    for key, value in values.items():
        if value:
            os.environ.setdefault(key, value)


def _aws_from_hook(hook) -> dict[str, str | None]:
    """The credentials, S3 endpoint and region the Amazon provider's hook resolves."""
    session = hook.get_session()
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials is not None else None
    return {
        "AWS_ACCESS_KEY_ID": frozen and frozen.access_key,
        "AWS_SECRET_ACCESS_KEY": frozen and frozen.secret_key,
        "AWS_SESSION_TOKEN": frozen and frozen.token,
        "AWS_ENDPOINT_URL": hook.conn_config.get_service_endpoint_url("s3"),
        "AWS_DEFAULT_REGION": session.region_name or hook.conn_config.region_name,
    }


def model_names() -> list[str]:
    """The models the pipelines push (``dags/pipelines/*.yaml``); a broken config is left out
    (its own DAG shows the error)."""
    from tasks.config import pipelines_by_model
    from tasks.settings import Settings

    return sorted(pipelines_by_model(Settings.from_env().pipelines_dir))


def model_asset(model_name: str):
    """The Airflow Asset a push updates: one per model, whatever store holds it."""
    from airflow.sdk import Asset

    return Asset(name=f"{model_name}_model", uri=f"tfpipe://models/{model_name}")


def run_context(pipeline_file: str, params, run_id: str, ds: str | None, ti):
    """The run's tfpipe context, built at task run time from Airflow's context."""
    from airflow.sdk import get_current_context

    from tasks.context import make_context

    export_aws_connection()
    if ds is None:  # manual runs have no logical date: partition by when the run was due
        ds = get_current_context()["dag_run"].run_after.date().isoformat()
    return make_context(
        pipeline_file,
        run_id=run_id,
        settings=Settings.from_env(),
        params=dict(params or {}),
        ds=ds,
        dag_id=ti.dag_id,
        try_number=ti.try_number,
        orchestrator="airflow",
        on_run=lambda run: _push_links(ti, run),
    )


def _push_links(ti, run: dict) -> None:
    """Where this task's MLflow run is, for the "MLflow run" and "MLflow experiment" links (plugins/)."""
    ti.xcom_push(key=MLFLOW_RUN_URL, value=run["run_url"])
    ti.xcom_push(key=MLFLOW_EXPERIMENT_URL, value=run["experiment_url"])
