"""Names, versions, run ids and S3 keys are checked where they become paths: nothing is written
outside its folder, and distinct run ids never share one."""

import pytest

from tasks import artifacts, storage
from tasks.cli import main
from tasks.errors import UserError


def test_distinct_run_ids_never_share_a_folder():
    a = artifacts.safe_run_id("manual__2026-01-01T00:00:00+00:00")
    b = artifacts.safe_run_id("manual__2026-01-01T00_00_00_00_00")
    assert a != b and "/" not in a and a.startswith("manual__2026-01-01T00_00_00_00_00-")
    assert artifacts.safe_run_id("r1") == "r1"  # a plain id is kept as it is
    with pytest.raises(ValueError):
        artifacts.safe_run_id("../..")


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 65, "/abs", "penguins\n"])
def test_a_model_or_pipeline_name_that_is_no_plain_name_is_refused(name):
    with pytest.raises(UserError):
        artifacts.model_dir_uri("/store", name)
    with pytest.raises(UserError):
        artifacts.pipeline_root("/artifacts", name)


@pytest.mark.parametrize("version", [0, -1, "1/../2", True, 1.5])
def test_a_version_is_a_positive_integer(version):
    with pytest.raises(UserError):
        artifacts.model_version_uri("/store", "penguins", version)


def test_rollback_of_a_hostile_model_name_writes_nothing(tmp_path, home, capsys):
    assert main(["rollback", "../x"]) == 1
    assert "model name '../x' must start with a letter" in capsys.readouterr().err
    assert not list(tmp_path.rglob("champion.json"))


def test_s3_keys_that_leave_the_folder_are_refused(tmp_path, monkeypatch):
    import boto3

    from tests.servers import moto_s3

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        try:
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="store")
            s3.put_object(Bucket="store", Key="m/1/saved_model.pb", Body=b"ok")
            s3.put_object(Bucket="store", Key="m/1/../../../evil.txt", Body=b"evil")
            dest = tmp_path / "deep" / "copy"
            with pytest.raises(storage.IntegrityError, match="would be written outside"):
                storage.download_dir("s3://store/m/1", dest)
            assert not list(tmp_path.rglob("evil.txt"))
        finally:
            storage.reset_clients()


def test_a_symbolic_link_in_a_local_store_is_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not copy")
    version = tmp_path / "store" / "m" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"ok")
    (version / "variables.data").symlink_to(secret)
    with pytest.raises(storage.IntegrityError, match="symbolic link"):
        storage.download_dir(str(version), tmp_path / "copy")
    assert not (tmp_path / "copy" / "variables.data").exists()


def test_a_same_sized_rewrite_on_s3_is_fetched_again(tmp_path, monkeypatch):
    import boto3

    from tests.servers import moto_s3

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        try:
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="art")
            s3.put_object(Bucket="art", Key="run/model/weights", Body=b"first try")
            assert (storage.materialize("s3://art/run/model", tmp_path / "cache") / "weights").read_bytes() == \
                b"first try"
            s3.put_object(Bucket="art", Key="run/model/weights", Body=b"retry!!!!")  # same name, same size
            assert (storage.materialize("s3://art/run/model", tmp_path / "cache") / "weights").read_bytes() == \
                b"retry!!!!"
        finally:
            storage.reset_clients()
