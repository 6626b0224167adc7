"""Shared fixtures: tiny pipelines and data written per test, nothing shared on disk."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="google")

# Airflow reads its home when first imported: give the whole session a private one (never
# ~/airflow), before any test imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="tfpipe-test-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)  # gone with the session, not left in /tmp
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "plugins")
os.environ.pop("TFPIPE_HOME", None)

from tests.helpers import PENGUINS_CSV, Recorder, write_pipeline  # noqa: E402 - after the environment above


@pytest.fixture
def penguins_frame() -> pd.DataFrame:
    return pd.read_csv(PENGUINS_CSV)


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A fresh ``TFPIPE_HOME`` for a CLI run, with no other location inherited from the environment."""
    monkeypatch.setenv("TFPIPE_HOME", str(tmp_path / "home"))
    for name in ("TFPIPE_ARTIFACT_ROOT", "TFPIPE_MODEL_STORE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path)


@pytest.fixture
def copy_csv(tmp_path: Path):
    def _copy(name: str = "data.csv") -> Path:
        target = tmp_path / name
        shutil.copyfile(PENGUINS_CSV, target)
        return target

    return _copy


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny penguins model, trained once per test session: examples, model, and where they live."""
    from tasks.config import load_pipeline
    from tasks.ingest import ingest_examples
    from tasks.training.model import model_spec_from
    from tasks.training.loop import train_model
    from tasks.validate import load_schema, load_statistics, validate_examples

    root = tmp_path_factory.mktemp("trained")
    config = load_pipeline(write_pipeline(root, train={"epochs": 4, "batch_size": 32, "learning_rate": 0.03}))
    cache, work = root / "cache", root / "work"
    examples = ingest_examples(config, config.data.source, str(root / "examples"), work)
    validation = validate_examples(examples.uri, str(root / "statistics"), str(root / "anomalies"),
                                   str(root / "schema.pbtxt"), "species", cache, work)
    spec = model_spec_from(load_schema(validation.statistics_uri, cache),
                           load_statistics(validation.statistics_uri, "train", cache),
                           label="species", task="multiclass",
                           features=[c for c in examples.columns if c != "species"],
                           hidden_units=[16], embedding_dim=3)
    progress = Recorder()
    model = train_model(examples.uri, spec, config.train, str(root / "model"), root / "ckpt", cache, work,
                        progress=progress)
    return {"root": root, "config": config, "examples": examples, "model": model, "epochs": progress.epochs,
            "steps": progress.steps, "cache": cache, "work": work}
