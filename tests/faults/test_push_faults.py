"""The push killed at each storage and MLflow call, in a process of its own (SIGKILL, what a lost
worker does), or failing there with an error; then what Airflow does next: a retry of the same
DAG run, or the DAG run's end. The release invariants (docs/release.md) hold after every point.

Real services: an ``mlflow server`` and, for the S3 store, a moto S3 endpoint, on 127.0.0.1."""

from __future__ import annotations

import pytest

from tasks import storage

from tasks.release import model_store
from tasks.release_steps import end_dag_run
from tests.faults.release import (assert_intact, assert_safe_after_crash, bless, claims, make_world, push,
                                  push_killed, seed, serving_state)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


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
        world = make_world(services, case[1], model)
        name = "-".join(case).replace(":", "-")
        before = seed(trained, world, name)
        files = len(model_store.read_manifest(storage.join(world["settings"].model_store, name, "1"))["files"])
        prepared[case] = {"world": world, "name": name, "before": before,
                          "blessing": bless(trained, world, name, f"{name}-2"),
                          "waiting": bless(trained, world, name, f"{name}-3"),
                          "point": case[2].replace("last", str(files + 1))}  # the manifest, then saved_model.pb

    def kill(case):
        p = prepared[case]
        push_killed(trained, p["world"], p["name"], f"{p['name']}-2", p["blessing"], p["point"], tmp)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(kill, CASES))
    return prepared


@pytest.mark.parametrize("kind,point", RETRIED)
def test_a_push_killed_at_each_call_then_retried_serves_one_new_version(trained, crashes, kind, point, tmp_path):
    case = crashes[("retry", kind, point)]
    world, name = case["world"], case["name"]
    assert_safe_after_crash(world, name, f"tiny/{name}-2", case["before"], tmp_path)
    # Airflow retries the task: the same DAG run finishes the version it claimed.
    record = push(trained, world, name, f"{name}-2", case["blessing"])
    assert record["version"] == record["champion"] == 2
    after = serving_state(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (2, 2, 2, False)
    assert_intact(world, name, 2, tmp_path)
    assert claims(world, name) == ["1", "2"]  # one DAG run, one version
    assert model_store.versions(world["settings"].model_store, name) == [2]  # retention (keep 1) removed v1


@pytest.mark.parametrize("kind,point", ENDED)
def test_a_push_killed_after_the_swap_is_reverted_when_its_dag_run_fails(trained, crashes, kind, point, tmp_path):
    """The last try was killed: the DAG run fails, and its end puts the champion back exactly as it
    was (generation included), so a run evaluated against that champion still pushes."""
    case = crashes[("ended", kind, point)]
    world, name, before = case["world"], case["name"], case["before"]
    crashed = assert_safe_after_crash(world, name, f"tiny/{name}-2", before, tmp_path)
    assert crashed["pending"] and crashed["pointer"] == 2
    end_dag_run(world["settings"], "tiny", f"{name}-2", "failed")
    after = serving_state(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (1, 1, 1, False)
    assert after["generation"] == before["generation"]
    record = push(trained, world, name, f"{name}-3", case["waiting"])
    assert record["champion"] == 3 and serving_state(world, name)["alias"] == 3


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
    pushed = push(trained, world, name, f"{name}-3", case["waiting"])
    assert pushed["champion"] == 3 and pushed["previous_champion"] == 1
    history = model_store.read_champion(store, name)["history"]
    assert [h["version"] for h in history] == [1] and history[-1]["generation"] == before["generation"]


ERROR_POINTS = {"config": ("tasks.release.models_config", "write_models_config"),
                "alias": ("tasks.tracking.registry", "move_champion_alias"),
                "commit": ("tasks.release.model_store", "commit_promotion")}


@pytest.mark.parametrize("point", sorted(ERROR_POINTS))
def test_a_push_failing_with_an_error_at_each_call_leaves_the_previous_champion(
        trained, model, services, point, tmp_path, monkeypatch):
    """Invariant 4: the failed try itself puts everything back before its error is raised."""
    import importlib

    world = make_world(services, "local", model)
    name = f"e-{point}"
    before = seed(trained, world, name)
    blessing = bless(trained, world, name, f"{name}-2")
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
        push(trained, world, name, f"{name}-2", blessing)
    after = serving_state(world, name)
    assert (after["pointer"], after["config"], after["alias"], after["pending"]) == (1, 1, 1, False)
    assert after["generation"] == before["generation"]
    retried = push(trained, world, name, f"{name}-2", blessing)
    assert retried["champion"] == 2 and claims(world, name) == ["1", "2"]
