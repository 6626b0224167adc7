"""The model store on S3 (a real S3 HTTP endpoint, moto, on 127.0.0.1): concurrent pushes, an
endpoint that fails mid-upload, and serving-sync into a local directory for TF Serving."""

import os
from pathlib import Path

import pytest

from tasks import storage

from tasks.release import model_store, models_config, serving
from tasks.evaluate import eval_data, predict
from tasks.release.push import PushError, push_model
from tasks.training.export import read_model_spec
from tests.helpers import blessing_for, run_concurrently
from tests.servers import failing_s3_proxy, moto_s3

pytestmark = pytest.mark.integration

BUCKET = "tfpipe-store"
STORE = f"s3://{BUCKET}/model_store"
BLESSED = blessing_for("m")


@pytest.fixture(scope="module")
def s3():
    saved = dict(os.environ)
    with moto_s3() as endpoint:
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_MAX_ATTEMPTS": "2"})
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            os.environ.clear()
            os.environ.update(saved)
            storage.reset_clients()


@pytest.fixture(scope="module")
def model(trained):
    records, _ = eval_data(trained["examples"].uri, read_model_spec(trained["model"].uri), trained["cache"])
    return {"saved_model": Path(trained["model"].saved_model_uri), "records": records[:4]}


def _push(model, name, owner):
    return push_model(model["saved_model"], BLESSED, STORE, name, owner=owner, warmup_records=model["records"])


def test_concurrent_pushes_to_s3_claim_distinct_versions(s3, model, tmp_path):
    def run(i):
        result = _push(model, "concurrent", f"w{i}")
        model_store.set_champion(STORE, "concurrent", result.version, by=f"w{i}", reason="push", only_if_newer=True)
        return result

    pushed = run_concurrently(run, 3)
    assert sorted(p.version for p in pushed) == [1, 2, 3]
    assert model_store.versions(STORE, "concurrent") == [1, 2, 3]
    assert model_store.champion(STORE, "concurrent")[0] == 3
    # Each version is whole: its listing matches its manifest, and it serves.
    for result in pushed:
        manifest = model_store.read_manifest(result.uri)
        listed = storage.list_files(result.uri)
        assert {k: v for k, v in listed.items() if k != model_store.MANIFEST_FILE} == {
            k: v["size"] for k, v in manifest["files"].items()}
    expected = predict(model["saved_model"], model["records"])
    check = serving.check_pushed_model(pushed[0].uri, expected, tmp_path / "cache")
    assert check["passed"] and check["requests"] == 4


def test_an_upload_failing_mid_way_leaves_serving_untouched(s3, model):
    first = _push(model, "flaky", "ok")
    model_store.set_champion(STORE, "flaky", first.version, by="ok", reason="push")
    champion_before = model_store.read_champion(STORE, "flaky")
    with failing_s3_proxy(s3, lambda path: "/variables/variables.data" in path) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy
        storage.reset_clients()
        try:
            with pytest.raises(PushError, match="flaky v2 .* failed, nothing of it is served"):
                _push(model, "flaky", "broken")
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3
            storage.reset_clients()
    assert model_store.versions(STORE, "flaky") == [1]
    assert model_store.read_champion(STORE, "flaky") == champion_before
    assert storage.list_files(f"{STORE}/flaky/2") == {}  # what it wrote was removed
    # Its number stays claimed: the next push takes the one after.
    assert _push(model, "flaky", "again").version == 3


def test_serving_sync_mirrors_the_s3_store(s3, model, tmp_path, capsys):
    from tasks.cli import main

    for i in range(2):
        result = _push(model, "synced", f"p{i}")
        model_store.set_champion(STORE, "synced", result.version, by="t", reason="push")
    local = tmp_path / "serving"
    assert main(["serving-sync", str(local), "--store", STORE, "--model", "synced"]) == 0
    assert "synced: added versions [1, 2]" in capsys.readouterr().out
    assert models_config.parse_models_config((local / "models.config").read_text()) == {
        "synced": (str(local / "synced"), [2])}
    assert storage.sha256_file(local / "synced" / "2" / "saved_model.pb") == \
        model_store.read_manifest(f"{STORE}/synced/2")["files"]["saved_model.pb"]["sha256"]
    # The store rolls back to v1 and retention drops nothing; then an object of v2 is damaged in S3.
    model_store.set_champion(STORE, "synced", 1, by="t", reason="rollback")
    bucket, key = storage.split_s3(f"{STORE}/synced/3")
    third = _push(model, "synced", "p3")
    storage.s3_client().put_object(Bucket=BUCKET, Key=f"{key}/variables/variables.index", Body=b"damaged")
    assert third.version == 3
    assert main(["serving-sync", str(local), "--store", STORE, "--model", "synced"]) == 1
    assert "NOT synced v3" in capsys.readouterr().err
    assert models_config.parse_models_config((local / "models.config").read_text())["synced"][1] == [1]
    assert sorted(p.name for p in (local / "synced").iterdir()) == ["1", "2"]
