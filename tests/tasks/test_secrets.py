"""Secrets never reach what a run writes: MLflow params, tags and artifacts, the task's output,
the training request the workers read, the model store."""

from tasks.cli import main
from tests.helpers import write_pipeline

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "sEcReT-aws-key-5f1c",
    "AWS_SESSION_TOKEN": "sEcReT-session-token-77aa",
    "MLFLOW_TRACKING_PASSWORD": "sEcReT-mlflow-password-0b9e",
    "AIRFLOW_CONN_AWS_DEFAULT": "aws://AKIAEXAMPLE:sEcReT-conn-password-31d2@",
}


def test_a_run_writes_none_of_the_secrets_in_its_environment(tmp_path, home, monkeypatch, capfd):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    pipeline = write_pipeline(tmp_path, name="secretive", optimize={"variants": ["tflite_float32"]},
                              train={"epochs": 2, "batch_size": 32, "strategy": "multi_worker", "workers": 2})
    assert main(["run", str(pipeline), "--run-id", "r1"]) == 0
    printed = capfd.readouterr()
    written = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "request.json" for p in written)  # the workers' request is among what is scanned
    assert any(p.suffix == ".db" for p in written) and any("model_store" in p.parts for p in written)
    needles = [value.encode() for value in SECRETS.values()] + [b"sEcReT-"]
    leaks = [(str(p), n.decode()) for p in written for n in needles if n in p.read_bytes()]
    leaks += [("output", n.decode()) for n in needles if n in (printed.out + printed.err).encode()]
    assert not leaks, leaks


def test_uris_are_written_without_their_credentials_and_workers_take_them_from_the_environment(monkeypatch):
    from tasks.settings import redact, tracking_uri_for_worker

    assert redact("https://ml:pw@mlflow.example:5000/api") == "https://mlflow.example:5000/api"
    assert redact("postgresql://user:pw@db/mlflow") == "postgresql://db/mlflow"
    assert redact("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ml:pw@mlflow.example:5000")
    assert tracking_uri_for_worker("https://mlflow.example:5000") == "https://ml:pw@mlflow.example:5000"
    assert tracking_uri_for_worker("https://other.example") == "https://other.example"
