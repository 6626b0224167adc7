"""`tfpipe run` in-process: the same steps without Airflow, tracked in the embedded MLflow store."""

import pytest

from tasks.cli import main
from tasks.settings import Settings
from tasks.tracking import MlflowTracking
from tests.conftest import write_pipeline


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPIPE_HOME", str(tmp_path / "home"))
    for name in ("TFPIPE_ARTIFACT_ROOT", "TFPIPE_MODEL_STORE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def test_run_until_a_step_tracks_it_and_stops(tmp_path, home, capsys):
    pipeline = write_pipeline(tmp_path, name="clirun")
    assert main(["run", str(pipeline), "--until", "validate_examples", "--run-id", "r1",
                 "--set", "data.num_shards=1"]) == 0
    out = capsys.readouterr().out
    assert "validate_examples done" in out and "train_model done" not in out
    runs = home / "artifacts" / "clirun" / "runs" / "r1"
    assert (runs / "examples" / "train" / "data-00000-of-00001.tfrecord.gz").is_file()
    assert (home / "artifacts" / "clirun" / "schema" / "schema.pbtxt").is_file()
    settings = Settings.from_env()
    summary = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location).pipeline_summary("clirun", "r1")
    assert set(summary["durations"]) == {"ingest_examples", "validate_examples"}
    assert summary["status"] == "RUNNING"  # stopped early: the run did not end


def test_failing_step_exits_nonzero_with_its_error(tmp_path, home, capsys):
    pipeline = write_pipeline(tmp_path, name="clifail", data={"source": str(tmp_path / "missing.csv")})
    assert main(["run", str(pipeline), "--run-id", "r1"]) == 1
    err = capsys.readouterr().err
    assert "DataError" in err and "missing.csv" in err
    settings = Settings.from_env()
    summary = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location).pipeline_summary("clifail", "r1")
    assert summary["status"] == "FAILED"


def test_bad_override_exits_2_naming_the_key(tmp_path, home, capsys):
    assert main(["run", str(write_pipeline(tmp_path)), "--set", "train.epoks=3"]) == 2
    assert "train.epoks: unknown key" in capsys.readouterr().err
