"""tfpipe datagen: the label is learnable, drift moves the distributions, corruption is injected."""

import numpy as np
import pandas as pd
import pytest

from tasks.bench.datagen import generate


def _design_matrix(frame: pd.DataFrame) -> np.ndarray:
    features = frame.drop(columns="label")
    numeric = features.select_dtypes("number")
    numeric = (numeric - numeric.mean()) / numeric.std()
    dummies = pd.get_dummies(features.select_dtypes("object"), dtype=float)
    return np.column_stack([np.ones(len(frame)), numeric.fillna(0).to_numpy(), dummies.to_numpy()])


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_linear_model_learns_the_label(tmp_path, task):
    frame = pd.read_parquet(generate(tmp_path / "d.parquet", 20_000, columns=12, task=task)["path"])
    x, y = _design_matrix(frame), frame["label"].to_numpy(dtype=float)
    train, test = slice(0, 15_000), slice(15_000, None)
    weights, *_ = np.linalg.lstsq(x[train], y[train], rcond=None)
    predicted = x[test] @ weights
    if task == "binary":
        majority = max(y[test].mean(), 1 - y[test].mean())
        assert ((predicted > 0.5) == (y[test] > 0.5)).mean() > majority + 0.15
    else:
        r2 = 1 - ((predicted - y[test]) ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()
        assert r2 > 0.5


def test_drift_moves_numeric_means_and_category_frequencies(tmp_path):
    base = pd.read_parquet(generate(tmp_path / "a.parquet", 20_000, columns=12)["path"])
    moved = pd.read_parquet(generate(tmp_path / "b.parquet", 20_000, columns=12, drift=1.0, seed=5)["path"])
    assert abs(moved["num_00"].mean() - base["num_00"].mean()) > 0.5 * base["num_00"].std()
    top = base["cat_00"].value_counts(normalize=True).index[0]
    assert moved["cat_00"].value_counts(normalize=True)[top] < base["cat_00"].value_counts(normalize=True)[top]


def test_corruption_rate(tmp_path):
    frame = pd.read_csv(generate(tmp_path / "c.csv", 20_000, columns=12, corrupt=0.05, missing=0.0)["path"])
    text = frame.select_dtypes("object").apply(lambda c: c.astype(str).eq("n/a?")).to_numpy().sum()
    unseen = frame.select_dtypes("object").apply(lambda c: c.astype(str).str.startswith("UNSEEN_")).to_numpy().sum()
    unlabeled = frame["label"].isna().sum()
    defects = text + unseen + unlabeled
    assert 0.5 * 0.05 * 20_000 < defects < 0.05 * 20_000  # the other defects are numeric values
    assert text and unseen and unlabeled
