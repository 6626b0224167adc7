"""Splits that hold their fractions (duplicates, unequal groups, rare classes) and the label's
handling at ingest: rows without a label, class names, labels that do not fit the task."""

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_pipeline
from tasks.ingest import DataError, ingest_examples, read_manifest
from tasks.splitting import apportion
from tasks.validate import read_split_record_batch
from tests.helpers import write_pipeline


def _ingest(tmp_path, frame, name="examples", source_name="data.parquet", **changes):
    path = tmp_path / source_name
    if source_name.endswith(".csv"):
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(path), **changes.pop("data", {})},
                                          **changes))
    return ingest_examples(config, config.data.source, str(tmp_path / name), tmp_path / "work")


def _split_frame(tmp_path, result, split):
    frame = read_split_record_batch(tmp_path / "examples", read_manifest(result.uri), split).to_pandas()
    return frame.applymap(lambda v: None if v is None else (v[0].decode() if isinstance(v[0], bytes) else v[0]))


def _survival_table(rows=1309, seed=0):
    """Few distinct rows, heavily duplicated (a passenger list reduced to class, sex and age group)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"pclass": rng.choice([1, 2, 3], rows, p=[0.25, 0.2, 0.55]),
                          "sex": rng.choice(["female", "male"], rows, p=[0.35, 0.65]),
                          "age_group": rng.choice(["child", "adult", "senior"], rows, p=[0.1, 0.8, 0.1])})
    odds = 0.2 + 0.5 * (frame.sex == "female") + 0.1 * (frame.pclass == 1)
    frame["survived"] = (rng.random(rows) < odds).astype(int)
    return frame


def test_duplicated_rows_are_spread_and_the_split_holds_its_fraction_and_class_balance(tmp_path):
    frame = _survival_table()
    assert frame.duplicated().sum() > 1200  # at most 36 distinct rows
    result = _ingest(tmp_path, frame, label="survived", task="binary")
    manifest = read_manifest(result.uri)
    assert abs(result.counts["eval"] / len(frame) - 0.2) < 0.002
    eval_rows = _split_frame(tmp_path, result, "eval")
    assert abs(eval_rows.survived.mean() - frame.survived.mean()) < 0.005  # stratified by the label
    commonest = frame.value_counts().idxmax()
    in_eval = (eval_rows[list(frame.columns)].apply(tuple, axis=1) == commonest).sum()
    assert 0.1 < in_eval / frame.value_counts().max() < 0.3  # copies spread like distinct rows
    assert manifest["duplicate_rows"] == len(frame) - len(frame.drop_duplicates())
    assert manifest["label_stats"]["splits"]["eval"]["class_counts"] == eval_rows.survived.value_counts().sort_index().tolist()


def test_split_depends_only_on_the_rows_not_their_order_files_or_batches(tmp_path):
    frame = _survival_table(rows=2000, seed=1)
    first = _ingest(tmp_path, frame, label="survived", task="binary")
    expected = _split_frame(tmp_path, first, "eval").value_counts().sort_index()
    shuffled = frame.sample(frac=1.0, random_state=5)
    for i, part in enumerate(np.array_split(shuffled, 3)):  # three files, one small Parquet row group each
        part.to_parquet(tmp_path / f"part-{i}.parquet", index=False, row_group_size=97)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "part-*.parquet")},
                                          label="survived", task="binary"))
    second = ingest_examples(config, config.data.source, str(tmp_path / "examples"), tmp_path / "work")
    assert second.counts == first.counts
    pd.testing.assert_series_equal(_split_frame(tmp_path, second, "eval").value_counts().sort_index(), expected)


@pytest.mark.parametrize("rows", [1000, 1337, 5003])
def test_every_split_is_within_two_points_of_its_fraction(tmp_path, rows):
    rng = np.random.default_rng(rows)
    frame = pd.DataFrame({"x": rng.normal(size=rows), "y": rng.choice(["a", "b", "c", "d"], rows, p=[.7, .2, .09, .01])})
    result = _ingest(tmp_path, frame, label="y", task="multiclass",
                     data={"split": {"train": 0.7, "eval": 0.2, "test": 0.1}})
    for split, fraction in {"train": 0.7, "eval": 0.2, "test": 0.1}.items():
        assert abs(result.counts[split] / rows - fraction) < 0.02, result.counts
    train = _split_frame(tmp_path, result, "train")
    assert set(train.y) == {"a", "b", "c", "d"}  # even the rarest class is trained on


def test_unequal_split_key_groups_hold_the_fraction_or_are_named(tmp_path, caplog):
    rng = np.random.default_rng(7)
    users = np.concatenate([np.full(600, 0), rng.zipf(1.6, 4400) % 700 + 1])  # user 0: 12% of the rows
    frame = pd.DataFrame({"user": users.astype(str), "x": rng.normal(size=len(users)),
                          "y": rng.integers(0, 2, len(users))})
    result = _ingest(tmp_path, frame, label="y", task="binary", data={"split_key": "user"})
    train, eval_rows = (_split_frame(tmp_path, result, s) for s in ("train", "eval"))
    assert not set(train.user) & set(eval_rows.user)  # a group stays in one split
    assert any("'0' holds 12.0% of the rows" in w for w in result.warnings), result.warnings
    assert "'0' holds 12.0%" in caplog.text
    big = frame.user.value_counts() / len(frame)
    assert abs(result.counts["eval"] / len(frame) - 0.2) <= 0.02 + big[big > 0.02].max() / 2


def test_rows_without_a_label_are_dropped_and_counted(tmp_path):
    frame = _survival_table(rows=500).astype({"survived": "float"})
    frame.loc[frame.index % 16 == 0, "survived"] = np.nan
    result = _ingest(tmp_path, frame, source_name="data.csv", label="survived", task="binary")
    dropped = int(frame.survived.isna().sum())
    assert result.unlabeled == dropped == 32 and sum(result.counts.values()) == 500 - dropped
    assert read_manifest(result.uri)["unlabeled_rows"] == dropped
    with pytest.raises(DataError, match=r"empty in 32 of 500 rows \(6%\), more than data.max_unlabeled_fraction"):
        _ingest(tmp_path, frame, source_name="data.csv", label="survived", task="binary",
                data={"max_unlabeled_fraction": 0.05})


def test_a_binary_label_written_1_and_2_trains_as_two_classes(tmp_path):
    frame = _survival_table(rows=300).assign(survived=lambda f: f.survived + 1)
    result = _ingest(tmp_path, frame, source_name="data.csv", label="survived", task="binary")
    assert result.columns["survived"] == "string"
    assert read_manifest(result.uri)["label_stats"]["classes"] == ["1", "2"]
    assert set(_split_frame(tmp_path, result, "train").survived) == {"1", "2"}


@pytest.mark.parametrize(("labels", "task", "message"), [
    ([1, 2, 3] * 20, "binary", "holds 3 values (1, 2, 3); task binary needs exactly two: use task: multiclass"),
    (["yes"] * 60, "multiclass", "holds one value ('yes') in every row"),
    (["a", "b", "c"] * 20, "regression", "holds text; task regression needs numbers"),
    ([4.5] * 60, "regression", "is 4.5 in every row"),
])
def test_a_label_that_does_not_fit_the_task_stops_ingest(tmp_path, labels, task, message):
    frame = pd.DataFrame({"x": np.arange(len(labels)), "target": labels})
    with pytest.raises(DataError) as error:
        _ingest(tmp_path, frame, source_name="data.csv", label="target", task=task, gate=None)
    assert message in str(error.value) and "data.csv" in str(error.value)
    assert not (tmp_path / "examples").exists()


def test_apportion_holds_the_total_and_each_stratum():
    sizes = np.array([1, 1, 1, 2, 5, 990])
    shares = apportion(sizes, 0.8)
    assert shares.sum() == 800 and (shares <= sizes).all() and (shares >= np.floor(sizes * 0.8)).all()
