"""MLflow down or hung while the push runs and when the DAG run ends (a proxy in front of the
suite's ``mlflow server`` is switched off or made to hang): the store stays as it was, the
scheduler's listener returns at once, and once MLflow is back no run is left RUNNING."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from tests.faults.release import bless, make_world, push, seed, serving_state
from tests.servers import switchable_proxy

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def mlflow(services, monkeypatch):
    """A switchable way to the suite's MLflow; its client gives up after one 2 s try."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with switchable_proxy(services["tracking_uri"]) as switch:
        yield switch


def _running(world, run_id: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(world["env"]["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_name for r in client.search_runs(experiments, "attributes.status = 'RUNNING'")
            if r.data.tags.get("tfpipe.run_id", r.data.tags.get("airflow.run_id")) == run_id
            or run_id in (r.info.run_name or "")]


def _store_unchanged(world, name: str) -> None:
    state = serving_state(world, name)
    assert (state["pointer"], state["config"], state["pending"]) == (1, 1, False)


def test_mlflow_down_mid_push_then_at_the_dag_runs_end_then_back(trained, model, services, mlflow, monkeypatch):
    from plugins import tfpipe_listener
    from tasks.tracking import registry as tracking

    world = make_world(services, "local", model, tracking_uri=mlflow.url)
    name = "mlflow-down"
    seed(trained, world, name)
    blessing = bless(trained, world, name, "run-2")
    real = tracking.move_champion_alias

    def server_gone(*args, **kwargs):
        mlflow.mode = "down"  # after the swap, at the registry alias
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "move_champion_alias", server_gone)
    with pytest.raises(Exception):
        push(trained, world, name, "run-2", blessing)
    _store_unchanged(world, name)  # the promotion was reverted although MLflow could not be told
    monkeypatch.setattr(tracking, "move_champion_alias", real)
    mlflow.mode = "up"
    assert _running(world, "run-2")  # the step could not end its runs: MLflow was gone
    mlflow.mode = "down"
    # The DAG run fails while MLflow is still down: the scheduler's hook returns at once ...
    monkeypatch.setattr(tfpipe_listener, "WAIT_SECONDS", 0.5)
    for key, value in world["env"].items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    tfpipe_listener.on_dag_run_failed(SimpleNamespace(dag_id="tiny", run_id="run-2"), msg="")
    assert time.monotonic() - started < 3
    # ... and once MLflow is back, no run of the DAG run is left RUNNING.
    mlflow.mode = "up"
    deadline = time.monotonic() + 60
    while _running(world, "run-2") and time.monotonic() < deadline:
        time.sleep(1)
    assert _running(world, "run-2") == []
    assert serving_state(world, name)["alias"] == 1
    # Airflow's retry, MLflow up: the same version is finished and promoted.
    assert push(trained, world, name, "run-2", blessing)["champion"] == 2
    state = serving_state(world, name)
    assert (state["pointer"], state["config"], state["alias"], state["pending"]) == (2, 2, 2, False)


def test_mlflow_hung_during_the_push_fails_it_in_bounded_time_with_the_store_untouched(
        trained, model, services, mlflow, monkeypatch):
    from mlflow import MlflowClient

    world = make_world(services, "local", model, tracking_uri=mlflow.url)
    name = "mlflow-hung"
    seed(trained, world, name)
    blessing = bless(trained, world, name, "run-2")
    real = MlflowClient.create_model_version

    def hang_then_register(self, *args, **kwargs):
        mlflow.mode = "hang"  # the registry stops answering at the registration
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "create_model_version", hang_then_register)
    started = time.monotonic()
    with pytest.raises(Exception):
        push(trained, world, name, "run-2", blessing)
    assert time.monotonic() - started < 60  # MLFLOW_HTTP_REQUEST_TIMEOUT, not forever
    _store_unchanged(world, name)
