"""Shared fixtures: tiny pipelines and data written per test, nothing shared on disk."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

warnings.filterwarnings("ignore", category=FutureWarning, module="google")

# Airflow reads its home when first imported: give the whole session a private one (never
# ~/airflow), before any test imports airflow.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="tfpipe-test-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "dags")
os.environ.pop("TFPIPE_HOME", None)

PENGUINS_CSV = Path(str(importlib.resources.files("palmerpenguins").joinpath("data", "penguins.csv")))


class Recorder:
    """A training ``Progress`` that keeps what it was told (steps with loss and rate, epoch records)."""

    def __init__(self):
        self.epochs, self.steps = [], []

    def on_steps(self, first_step, losses, learning_rate):
        self.steps += [(first_step + i, loss, learning_rate) for i, loss in enumerate(losses)]

    def on_epoch(self, epoch, record):
        self.epochs.append(record)


@pytest.fixture
def penguins_frame() -> pd.DataFrame:
    return pd.read_csv(PENGUINS_CSV)


def write_pipeline(directory: Path, name: str = "tiny", **changes) -> Path:
    """A pipeline YAML like penguins', with ``changes`` merged at the top level."""
    config = {
        "model_name": name,
        "data": {"source": str(PENGUINS_CSV), "num_shards": 2},
        "label": "species",
        "task": "multiclass",
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.02},
        "gate": {"metrics": {"accuracy": {"lower_bound": 0.5, "max_decrease": 0.05}}},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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
