"""The AWS connection through the Amazon provider's hook: keys, a session token, a profile and a
role to assume each become credentials that tfpipe's S3 client uses (against a real S3 and STS
endpoint, moto's server)."""

from __future__ import annotations

import json

import pytest

from tests.servers import moto_s3

pytestmark = [pytest.mark.production, pytest.mark.integration]


@pytest.fixture
def endpoint(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    with moto_s3() as url:
        yield url


def _resolve(monkeypatch, extra: dict, login: str | None = "AKIDTFPIPE", password: str | None = "not-a-secret"):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsGenericHook

    from dags.airflow_support import _aws_from_hook

    conn = {"conn_type": "aws", "extra": extra, **({"login": login, "password": password} if login else {})}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    values = _aws_from_hook(AwsGenericHook(aws_conn_id="aws_default", client_type="s3"))
    for key, value in values.items():
        if value:
            monkeypatch.setenv(key, value)
    return values


def _usable(bucket: str) -> None:
    """tfpipe's own S3 client, from the variables alone, writes and reads an object."""
    import os

    from tasks import storage

    storage.reset_clients()
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        storage.s3_client().create_bucket(Bucket=bucket, **where)
        storage.write_bytes(f"s3://{bucket}/probe.txt", b"ok")
        assert storage.read_bytes(f"s3://{bucket}/probe.txt") == b"ok"
    finally:
        storage.reset_clients()


def test_keys_and_endpoint(monkeypatch, endpoint):
    values = _resolve(monkeypatch, {"endpoint_url": endpoint, "region_name": "eu-west-1"})
    assert values["AWS_ACCESS_KEY_ID"] == "AKIDTFPIPE" and not values["AWS_SESSION_TOKEN"]
    assert values["AWS_ENDPOINT_URL"] == endpoint and values["AWS_DEFAULT_REGION"] == "eu-west-1"
    _usable("keys")


def test_a_session_token(monkeypatch, endpoint):
    values = _resolve(monkeypatch, {"endpoint_url": endpoint, "aws_session_token": "FwoGZXIvYXdzEXAMPLE"})
    assert values["AWS_SESSION_TOKEN"] == "FwoGZXIvYXdzEXAMPLE"
    _usable("token")


def test_a_role_to_assume(monkeypatch, endpoint):
    values = _resolve(monkeypatch, {"endpoint_url": endpoint, "region_name": "us-east-1",
                                    "role_arn": "arn:aws:iam::123456789012:role/tfpipe-worker",
                                    "service_config": {"sts": {"endpoint_url": endpoint}}})
    # STS's temporary credentials, not the connection's own keys.
    assert values["AWS_ACCESS_KEY_ID"].startswith("ASIA") and values["AWS_SESSION_TOKEN"]
    _usable("role")


def test_a_profile(monkeypatch, endpoint, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[training]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = from-the-profile\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    values = _resolve(monkeypatch, {"endpoint_url": endpoint, "profile_name": "training"}, login=None)
    assert values["AWS_ACCESS_KEY_ID"] == "AKIDPROFILE"
    _usable("profile")
