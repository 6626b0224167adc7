"""Helpers the tests share (imported by name; the fixtures are in conftest.py)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import yaml

from tasks.artifacts import Blessing, Check

PENGUINS_CSV = Path(str(importlib.resources.files("palmerpenguins").joinpath("data", "penguins.csv")))


def run_concurrently(fn, count: int) -> list:
    """``fn(i)`` for i in range(count), each on its own thread, all started before any is joined;
    the results in completion order. The first error is raised after all have finished."""
    import threading

    results, errors = [], []

    def run(i):
        try:
            results.append(fn(i))
        except Exception as error:  # noqa: BLE001 - raised below, once all threads are done
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


class Recorder:
    """A training ``Progress`` that keeps what it was told (steps with loss and rate, epoch records)."""

    def __init__(self):
        self.epochs, self.steps = [], []

    def on_steps(self, first_step, losses, learning_rate):
        self.steps += [(first_step + i, loss, learning_rate) for i, loss in enumerate(losses)]

    def on_epoch(self, epoch, record):
        self.epochs.append(record)


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




def blessing_for(model_uri: str, blessed: bool = True) -> Blessing:
    """A verdict on ``model_uri`` with one absolute check, passed or failed, for the push's own tests."""
    check = Check("accuracy", "lower_bound", 0.9 if blessed else 0.1, 0.5, None, blessed)
    return Blessing(uri="evaluation", model_uri=model_uri, blessed=blessed, metrics={"accuracy": check.value},
                    baseline=None, checks=(check,))
