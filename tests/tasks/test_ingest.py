import gzip
import json

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_pipeline
from tasks.ingest import DataError, assign_splits, ingest_examples, read_manifest
from tasks.validate import read_split_record_batch
from tests.conftest import write_pipeline


def _ingest(tmp_path, config, name="examples"):
    return ingest_examples(config, config.data.source, str(tmp_path / name), tmp_path / "work")


def test_csv_becomes_split_gzip_shards_with_manifest(tmp_path, pipeline_file, penguins_frame):
    config = load_pipeline(pipeline_file)
    result = _ingest(tmp_path, config)
    manifest = read_manifest(result.uri)
    assert sum(result.counts.values()) == len(penguins_frame) == 344
    assert set(result.counts) == {"train", "eval"}
    assert 0.7 < result.counts["train"] / 344 < 0.9
    assert manifest["sources"][0]["rows"] == 344 and len(manifest["sources"][0]["sha256"]) == 64
    assert manifest["columns"]["island"] == "string" and manifest["columns"]["year"] == "int"
    assert len(manifest["splits"]["train"]["files"]) == 2
    for rel in manifest["splits"]["train"]["files"]:
        with gzip.open(tmp_path / "examples" / rel) as handle:
            handle.read(1)  # GZIP TFRecords
    assert (tmp_path / "examples" / "_SUCCESS").is_file()
    assert not list((tmp_path / "work").iterdir())  # scratch removed


def test_missing_values_become_absent_features(tmp_path, pipeline_file, penguins_frame):
    result = _ingest(tmp_path, load_pipeline(pipeline_file))
    manifest = read_manifest(result.uri)
    batches = [read_split_record_batch(tmp_path / "examples", manifest, s) for s in ("train", "eval")]
    missing_sex = sum(b.column(b.schema.get_field_index("sex")).null_count for b in batches)
    assert missing_sex == int(penguins_frame["sex"].isna().sum()) == 11


def test_split_is_deterministic_and_rerun_replaces_output(tmp_path, pipeline_file):
    config = load_pipeline(pipeline_file)
    first = _ingest(tmp_path, config)
    before = read_split_record_batch(tmp_path / "examples", read_manifest(first.uri), "eval").to_pandas()
    second = _ingest(tmp_path, config)
    after = read_split_record_batch(tmp_path / "examples", read_manifest(second.uri), "eval").to_pandas()
    assert first.counts == second.counts
    pd.testing.assert_frame_equal(before.sort_values("bill_length_mm", key=lambda s: s.str[0]).reset_index(drop=True),
                                  after.sort_values("bill_length_mm", key=lambda s: s.str[0]).reset_index(drop=True))


def test_split_does_not_depend_on_row_order(penguins_frame):
    fractions = {"train": 0.8, "eval": 0.2}
    index, _ = assign_splits(penguins_frame, fractions, None)
    shuffled = penguins_frame.sample(frac=1.0, random_state=3)
    index_shuffled, _ = assign_splits(shuffled, fractions, None)
    assert np.array_equal(index[shuffled.index.to_numpy()], index_shuffled)


def test_split_key_keeps_groups_together(penguins_frame):
    index, _ = assign_splits(penguins_frame, {"train": 0.5, "eval": 0.5}, "island")
    assert penguins_frame.assign(split=index).groupby("island")["split"].nunique().max() == 1


def test_parquet_and_several_files(tmp_path, penguins_frame):
    penguins_frame.iloc[:200].to_parquet(tmp_path / "a.parquet")
    penguins_frame.iloc[200:].to_parquet(tmp_path / "b.parquet")
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "*.parquet")}))
    result = _ingest(tmp_path, config)
    assert sum(result.counts.values()) == 344
    assert [s["rows"] for s in read_manifest(result.uri)["sources"]] == [200, 144]


def test_source_template_selects_the_partition(tmp_path, penguins_frame):
    from tasks.ingest import render_sources

    assert render_sources(["s3://b/date={{ ds }}/*.csv"], {"ds": "2026-01-02"}) == ["s3://b/date=2026-01-02/*.csv"]
    with pytest.raises(DataError, match="cannot render"):
        render_sources(["x/{{ nope }}.csv"], {"ds": "2026-01-02"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"species,island\n", "no data rows"),
        (b"island,bill_length_mm\nDream,40\n", "label column 'species' is missing"),
        (b"species,island\nAdelie,Dream\n,Biscoe\n", "'species' (the label) is empty in 1 row"),
        (b"species,island,island\nAdelie,Dream,Dream\n", "duplicated column"),
        (b"species,island\nAdelie,Dr\xffeam\n", "not valid UTF-8"),
        (b"species,x\nAdelie,inf\n", "infinite"),
    ],
)
def test_bad_csv_names_file_and_problem(tmp_path, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(bad)}))
    with pytest.raises(DataError) as error:
        _ingest(tmp_path, config)
    assert message in str(error.value)
    assert "bad.csv" in str(error.value)
    assert not (tmp_path / "examples").exists()


def test_missing_feature_column_is_named(tmp_path, copy_csv):
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(copy_csv())}, features=["island", "wingspan"]))
    with pytest.raises(DataError, match=r"feature column\(s\) \['wingspan'\] are missing"):
        _ingest(tmp_path, config)


def test_missing_source_is_named(tmp_path):
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "nope-*.csv")}))
    with pytest.raises(DataError, match="no such file"):
        _ingest(tmp_path, config)


def test_manifest_is_json(tmp_path, pipeline_file):
    result = _ingest(tmp_path, load_pipeline(pipeline_file))
    assert json.loads((tmp_path / "examples" / "manifest.json").read_text())["label"] == "species" == result.label
