"""The push on an S3 store whose endpoint misbehaves (a proxy in front of a real S3 endpoint,
moto, on 127.0.0.1): 5xx answers, requests that hang, answers lost after the write was done,
and an endpoint that ignores conditional writes. The push step runs whole, MLflow included."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from tasks import storage

from tasks.release import model_store, models_config
from tasks.config import GateConfig, MetricGate
from tasks.evaluate import evaluate_model
from tasks.context import make_context
from tasks.release_steps import push_model
from tasks.settings import Settings
from tests.helpers import write_pipeline
from tests.servers import faulty_s3_proxy, moto_s3

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

BUCKET = "tfpipe-s3-faults"
STORE = f"s3://{BUCKET}/store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-faults")
    saved = dict(os.environ)
    with moto_s3() as endpoint:
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "4",
                           "TFPIPE_S3_TIMEOUT_SECONDS": "1.5"})
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        try:
            yield {"endpoint": endpoint, "root": root, "pipeline": write_pipeline(root, name="tiny", push={"skip_identical": False})}
        finally:
            os.environ.clear()
            os.environ.update(saved)
            storage.reset_clients()


@pytest.fixture
def behind(s3):
    """Point boto3 at a proxy with the given faults for the length of a ``with`` block."""
    from contextlib import contextmanager

    @contextmanager
    def proxy(fault):
        with faulty_s3_proxy(s3["endpoint"], fault, hang_seconds=3.0) as url:
            os.environ["AWS_ENDPOINT_URL"] = url
            storage.reset_clients()
            try:
                yield
            finally:
                os.environ["AWS_ENDPOINT_URL"] = s3["endpoint"]
                storage.reset_clients()

    return proxy


def _settings(s3) -> Settings:
    root = s3["root"]
    return Settings(home=root / "home", artifact_root=str(root / "artifacts"), model_store=STORE,
                    tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _run(trained, s3, name: str, run_id: str) -> dict:
    """Evaluate against what serves, then push: a run's last two steps."""
    settings = _settings(s3)
    state = model_store.champion_state(STORE, name)
    blessing = evaluate_model(trained["model"].uri, trained["examples"].uri,
                              GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}),
                              model_store.champion(STORE, name), str(s3["root"] / "evaluations" / name / run_id),
                              trained["cache"], trained["work"], champion_generation=state[1] if state else None)
    ctx = make_context(s3["pipeline"], run_id=run_id, settings=settings, overrides={"model_name": name})
    return push_model(ctx, trained["examples"].to_dict(), trained["model"].to_dict(), blessing.to_dict())


def _consistent(s3, name: str, version: int, generation: int) -> None:
    from mlflow import MlflowClient

    pointer = model_store.read_champion(STORE, name)
    assert (pointer["version"], pointer["generation"], "pending_until" in pointer) == (version, generation, False)
    config = models_config.parse_models_config(storage.read_bytes(f"{STORE}/{model_store.MODELS_CONFIG}").decode())
    assert config[name][1] == [version]
    alias = MlflowClient(_settings(s3).tracking_uri).get_model_version_by_alias(name, "champion")
    assert alias.tags["store_version"] == str(version)
    assert sorted(storage.list_dir(f"{STORE}/{name}/{model_store.CLAIMS}")) == [str(v) for v in range(1, version + 1)]
    manifest = model_store.read_manifest(f"{STORE}/{name}/{version}")
    listed = storage.list_files(f"{STORE}/{name}/{version}")
    assert {k: v for k, v in listed.items() if k != model_store.MANIFEST_FILE} == {
        k: v["size"] for k, v in manifest["files"].items()}


def _first_of_each(kinds: tuple[str, ...], action: str, seen: Counter):
    """``action`` for the first request of each object whose method is in ``kinds``."""
    def fault(method: str, path: str):
        key = (method, path.split("?")[0])
        seen[key] += 1
        if method in kinds and seen[key] == 1 and "/store/" in path:
            seen["faults"] += 1
            return action
        return None

    return fault


def test_5xx_answers_and_hung_requests_are_retried_and_the_release_stays_whole(trained, s3, behind):
    seen: Counter = Counter()
    first = _first_of_each(("PUT",), "503", seen)

    def fault(method, path):
        if method == "GET" and path.split("?")[0].endswith("/champion.json") and seen["hung"] < 2:
            seen["hung"] += 1
            return "hang"  # no answer within TFPIPE_S3_TIMEOUT_SECONDS: timed out, sent again
        return first(method, path)

    with behind(fault):
        assert _run(trained, s3, "slow", "run-1")["champion"] == 1
        assert _run(trained, s3, "slow", "run-2")["champion"] == 2
    assert seen["faults"] >= 10 and seen["hung"] == 2
    _consistent(s3, "slow", 2, 2)


def test_answers_lost_after_the_write_neither_claim_twice_nor_move_the_champion_twice(trained, s3, behind):
    """Every object's first PUT is written, and its answer lost: the client sends it again (a
    conditional one then fails with 412, as its own earlier write is there)."""
    seen: Counter = Counter()
    with behind(_first_of_each(("PUT",), "lose", seen)):
        first = _run(trained, s3, "lost", "run-1")
        second = _run(trained, s3, "lost", "run-2")
    assert seen["faults"] >= 10
    assert (first["version"], first["previous_champion"]) == (1, None)
    assert (second["version"], second["previous_champion"]) == (2, 1)
    _consistent(s3, "lost", 2, 2)  # one claim per run, one pointer change per push


def test_an_endpoint_that_ignores_conditional_writes_is_refused_before_anything_is_written(trained, s3, behind):
    with behind(lambda method, path: "ignore-conditions"):
        with pytest.raises(storage.ConditionalWritesError, match="ignores conditional writes") as error:
            _run(trained, s3, "unsafe", "run-1")
    assert "If-None-Match" in str(error.value) and "two pushes could share a version" in str(error.value)
    assert storage.list_files(f"{STORE}/unsafe") == {}  # no claim, no version, no pointer
    assert not [k for k in storage.list_files(STORE) if ".tfpipe-probe" in k]  # the probe was removed
