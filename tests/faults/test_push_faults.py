"""The push killed at each storage and MLflow call, in a process of its own (SIGKILL, what a lost
worker does), or failing there with an error; then what Airflow does next: a retry of the same
DAG run, or the DAG run's end. The release invariants (docs/release.md) hold after every point.

Real services: an ``mlflow server`` and, for the S3 store, a moto S3 endpoint, on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import model_store, serving, storage
from tasks.config import GateConfig, MetricGate
from tasks.evaluate import evaluate_model
from tasks.pipeline import end_dag_run, make_context, push_model
from tasks.settings import Settings
from tests.conftest import write_pipeline
from tests.servers import mlflow_server, moto_s3

pytestmark = [pytest.mark.faults, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tfpipe-faults"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_MAX_ATTEMPTS": "2"}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    saved = dict(os.environ)
    with mlflow_server(root / "mlflow") as tracking_uri, moto_s3() as endpoint:
        os.environ.update({**AWS, "AWS_ENDPOINT_URL": endpoint})
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        try:
            yield {"root": root, "tracking_uri": tracking_uri, "endpoint": endpoint,
                   "pipeline": write_pipeline(root, name="tiny", push={"keep_versions": 1})}
        finally:
            os.environ.clear()
            os.environ.update(saved)
            storage.reset_clients()


@pytest.fixture(scope="module")
def model(trained, services):
    """The trained model as train_model leaves it: logged to MLflow, whose registry versions point at it."""
    from mlflow import MlflowClient

    client = MlflowClient(services["tracking_uri"])
    run = client.create_run(client.create_experiment("faults-training"))
    client.log_artifacts(run.info.run_id, trained["model"].saved_model_uri, "model")
    client.set_terminated(run.info.run_id)
    return {**trained["model"].to_dict(), "mlflow_run_id": run.info.run_id}


def _world(services, kind: str, model: dict) -> dict:
    root = services["root"]
    store = str(root / "store") if kind == "local" else f"s3://{BUCKET}/store"
    env = {"TFPIPE_HOME": str(root / "home"), "TFPIPE_ARTIFACT_ROOT": str(root / "artifacts"),
           "TFPIPE_MODEL_STORE": store, "MLFLOW_TRACKING_URI": services["tracking_uri"]}
    return {**services, "env": env, "settings": Settings.from_env(env), "model": model,
            "process_env": {**AWS, "AWS_ENDPOINT_URL": services["endpoint"]}}


def _bless(trained, world, name: str, run_id: str) -> dict:
    """Evaluated against what serves now, as the run's evaluate step does."""
    store = world["settings"].model_store
    state = model_store.champion_state(store, name)
    return evaluate_model(trained["model"].uri, trained["examples"].uri,
                          GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}),
                          model_store.champion(store, name), str(world["root"] / "evaluations" / name / run_id),
                          trained["cache"], trained["work"], champion_generation=state[1] if state else None).to_dict()


def _push(trained, world, name: str, run_id: str, blessing: dict) -> dict:
    ctx = make_context(world["pipeline"], run_id=run_id, settings=world["settings"], overrides={"model_name": name})
    return push_model(ctx, trained["examples"].to_dict(), world["model"], blessing)


def _push_killed(trained, world, name: str, run_id: str, blessing: dict, point: str, tmp_path: Path) -> int:
    inputs = tmp_path / f"{name}-{run_id}.json"
    inputs.write_text(json.dumps({
        "pipeline": str(world["pipeline"]), "run_id": run_id, "env": world["env"],
        "process_env": world["process_env"], "overrides": {"model_name": name},
        "examples": trained["examples"].to_dict(), "model": world["model"], "blessing": blessing}))
    done = subprocess.run([sys.executable, "-m", "tests.faults.push_with_fault", str(inputs), point], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -9, f"the push was not killed at {point}: rc {done.returncode}\n{done.stderr[-3000:]}"
    return done.returncode


def _served(world, name: str) -> dict:
    """What each of the three says serves: the pointer (and whether it is pending), models.config,
    the registry alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = world["settings"].model_store
    pointer = model_store.read_champion(store, name)
    config_uri = storage.join(store, model_store.MODELS_CONFIG)
    config = model_store.parse_models_config(storage.read_bytes(config_uri).decode()) if storage.exists(
        config_uri) else {}
    try:
        alias = int(MlflowClient(world["tracking_uri"]).get_model_version_by_alias(name, "champion")
                    .tags["store_version"])
    except MlflowException:
        alias = None
    return {"pointer": pointer["version"] if pointer else None, "pending": bool(pointer and "pending_until" in pointer),
            "generation": pointer.get("generation") if pointer else None,
            "config": config.get(name, (None, [None]))[1][0], "alias": alias}


def _assert_intact(world, name: str, version: int, tmp_path: Path) -> None:
    """Invariant 1: every file matches the manifest and the version loads and answers its warm-up requests."""
    local, _ = serving.verify_version(world["settings"].model_store, name, version, tmp_path / "verify")
    assert (local / model_store.SAVED_MODEL_PB).is_file()


def _assert_safe_after_crash(world, name: str, owner: str, before: dict, tmp_path: Path) -> dict:
    """Right after the kill: TF Serving serves an intact version, the one before the push, or (its
    promotion pending, owned by the dead push) the new one; the pointer is either settled and
    agrees with models.config, or pending for the killed push."""
    now = _served(world, name)
    _assert_intact(world, name, now["config"], tmp_path)
    if now["pending"]:
        assert model_store.read_champion(world["settings"].model_store, name)["by"] == owner
    else:  # settled: before the swap, or after the commit
        assert now["pointer"] == now["config"] == now["alias"] in (before["config"], before["config"] + 1)
    return now


def _seed(trained, world, name: str) -> dict:
    _push(trained, world, name, "seed", _bless(trained, world, name, "seed"))
    served = _served(world, name)
    assert served["pointer"] == served["config"] == served["alias"] == 1 and not served["pending"]
    return served


def _claims(world, name: str) -> list[str]:
    root = storage.join(world["settings"].model_store, name, model_store.CLAIMS)
    return sorted(storage.list_dir(root))


RETRIED = [("local", p) for p in ("upload:last:mid", "swap:mid", "config:mid", "register", "alias", "commit",
                                  "retention")] + [("s3", p) for p in ("upload:last", "config")]
ENDED = [("local", "commit"), ("s3", "alias")]
CASES = [("retry", kind, point) for kind, point in RETRIED] + [("ended", kind, point) for kind, point in ENDED] + [
    ("lease", "local", "alias")]


@pytest.fixture(scope="module")
def crashes(trained, model, services, tmp_path_factory):
    """Every case's model: v1 pushed and champion, run-2 blessed against it and killed at the case's
    point in a process of its own (three at a time), run-3 blessed against v1 meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("crashes")
    prepared = {}
    for case in CASES:
        world = _world(services, case[1], model)
        name = "-".join(case).replace(":", "-")
        before = _seed(trained, world, name)
        files = len(model_store.read_manifest(storage.join(world["settings"].model_store, name, "1"))["files"])
        prepared[case] = {"world": world, "name": name, "before": before,
                          "blessing": _bless(trained, world, name, f"{name}-2"),
                          "waiting": _bless(trained, world, name, f"{name}-3"),
                          "point": case[2].replace("last", str(files + 1))}  # the manifest, then saved_model.pb

    def kill(case):
        p = prepared[case]
        _push_killed(trained, p["world"], p["name"], f"{p['name']}-2", p["blessing"], p["point"], tmp)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(kill, CASES))
    return prepared


@pytest.mark.parametrize("kind,point", RETRIED)
def test_a_push_killed_at_each_call_then_retried_serves_one_new_version(trained, crashes, kind, point, tmp_path):
    case = crashes[("retry", kind, point)]
    world, name = case["world"], case["name"]
    _assert_safe_after_crash(world, name, f"tiny/{name}-2", case["before"], tmp_path)
    # Airflow retries the task: the same DAG run finishes the version it claimed.
    record = _push(trained, world, name, f"{name}-2", case["blessing"])
    assert record["version"] == record["champion"] == 2
    after = _served(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (2, 2, 2, False)
    _assert_intact(world, name, 2, tmp_path)
    assert _claims(world, name) == ["1", "2"]  # one DAG run, one version
    assert model_store.versions(world["settings"].model_store, name) == [2]  # retention (keep 1) removed v1


@pytest.mark.parametrize("kind,point", ENDED)
def test_a_push_killed_after_the_swap_is_reverted_when_its_dag_run_fails(trained, crashes, kind, point, tmp_path):
    """The last try was killed: the DAG run fails, and its end puts the champion back exactly as it
    was (generation included), so a run evaluated against that champion still pushes."""
    case = crashes[("ended", kind, point)]
    world, name, before = case["world"], case["name"], case["before"]
    crashed = _assert_safe_after_crash(world, name, f"tiny/{name}-2", before, tmp_path)
    assert crashed["pending"] and crashed["pointer"] == 2
    end_dag_run(world["settings"], "tiny", f"{name}-2", "failed")
    after = _served(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (1, 1, 1, False)
    assert after["generation"] == before["generation"]
    record = _push(trained, world, name, f"{name}-3", case["waiting"])
    assert record["champion"] == 3 and _served(world, name)["alias"] == 3


def test_a_promotion_whose_process_died_is_reverted_by_the_next_push_once_its_lease_expired(trained, crashes):
    """A push outside Airflow (``tfpipe run``) killed after the swap: nobody ends its DAG run; the
    next operation reverts the promotion once its lease (TF Serving's timeout plus 15 minutes) is over."""
    case = crashes[("lease", "local", "alias")]
    world, name, before = case["world"], case["name"], case["before"]
    store = world["settings"].model_store
    assert model_store.read_champion(store, name)["version"] == 2
    # Still within its lease: nothing to revert (the push may still be running).
    assert model_store.revert_pending(store, name) is None
    # The lease ran out (written as if its time had passed):
    storage.update_json(model_store.champion_uri(store, name), lambda r: {**r, "pending_until": "2000-01-01T00:00:00Z"})
    pushed = _push(trained, world, name, f"{name}-3", case["waiting"])
    assert pushed["champion"] == 3 and pushed["previous_champion"] == 1
    history = model_store.read_champion(store, name)["history"]
    assert [h["version"] for h in history] == [1] and history[-1]["generation"] == before["generation"]


ERROR_POINTS = {"config": ("tasks.model_store", "write_models_config"),
                "alias": ("tasks.tracking", "move_champion_alias"),
                "commit": ("tasks.model_store", "commit_promotion")}


@pytest.mark.parametrize("point", sorted(ERROR_POINTS))
def test_a_push_failing_with_an_error_at_each_call_leaves_the_previous_champion(
        trained, model, services, point, tmp_path, monkeypatch):
    """Invariant 4: the failed try itself puts everything back before its error is raised."""
    import importlib

    world = _world(services, "local", model)
    name = f"e-{point}"
    before = _seed(trained, world, name)
    blessing = _bless(trained, world, name, f"{name}-2")
    module, attribute = ERROR_POINTS[point]
    target = importlib.import_module(module)
    real = getattr(target, attribute)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError(f"{point}: the service went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attribute, failing)
    with pytest.raises(ConnectionError):
        _push(trained, world, name, f"{name}-2", blessing)
    after = _served(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (1, 1, 1, False)
    assert after["generation"] == before["generation"]
    retried = _push(trained, world, name, f"{name}-2", blessing)
    assert retried["champion"] == 2 and _claims(world, name) == ["1", "2"]
