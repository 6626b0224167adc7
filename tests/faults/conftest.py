"""The fault suite's services, shared by its modules: an ``mlflow server`` and a moto S3 endpoint
on 127.0.0.1, and the session's tiny model logged to that MLflow."""

from __future__ import annotations

import os

import pytest

from tasks import storage
from tests.helpers import write_pipeline
from tests.faults.release import AWS, BUCKET
from tests.servers import mlflow_server, moto_s3


@pytest.fixture(scope="package")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    saved = dict(os.environ)
    with mlflow_server(root / "mlflow") as tracking_uri, moto_s3() as endpoint:
        os.environ.update({**AWS, "AWS_ENDPOINT_URL": endpoint})
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        try:
            yield {"root": root, "tracking_uri": tracking_uri, "endpoint": endpoint,
                   "pipeline": write_pipeline(root, name="tiny", push={"keep_versions": 1, "skip_identical": False})}
        finally:
            os.environ.clear()
            os.environ.update(saved)
            storage.reset_clients()


@pytest.fixture(scope="package")
def model(trained, services):
    """The trained model as train_model leaves it: logged to MLflow, whose registry versions point at it."""
    from mlflow import MlflowClient

    client = MlflowClient(services["tracking_uri"])
    run = client.create_run(client.create_experiment("faults-training"))
    client.log_artifacts(run.info.run_id, trained["model"].saved_model_uri, "model")
    client.set_terminated(run.info.run_id)
    return {**trained["model"].to_dict(), "mlflow_run_id": run.info.run_id}
