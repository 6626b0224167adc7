from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.config import load_pipeline
from tasks.ingest import DataError, ingest_examples
from tasks.validate import (DataValidationError, column_types, load_schema, load_schema_text, record_passing_run,
                            validate_examples)
from tests.helpers import PENGUINS_CSV, write_pipeline


def _run(tmp_path, source, run, trained=True, **changes):
    """Ingest then validate as the pipeline does: column types from the recorded schema; a run that
    passes and (``trained``) trains records its schema and becomes the drift baseline."""
    data = {"source": str(source), **changes.pop("data", {})}
    config = load_pipeline(write_pipeline(tmp_path, data=data, **changes))
    recorded = tmp_path / "schema" / "schema.pbtxt"
    types = column_types(load_schema_text(recorded.read_text())) if recorded.exists() else {}
    examples = ingest_examples(config, config.data.source, str(tmp_path / run / "examples"), tmp_path / "work",
                               column_types=types)
    baseline = str(tmp_path / "schema" / "baseline.json")
    result = validate_examples(
        examples.uri, str(tmp_path / run / "statistics"), str(tmp_path / run / "anomalies"),
        str(recorded), "species", tmp_path / "cache", tmp_path / "work", config=config.validation,
        baseline_uri=baseline, run_id=run, pipeline="tiny",
    )
    if trained:
        record_passing_run(result.statistics_uri, result.schema_source, str(recorded), baseline, run)
    return result


def test_first_run_infers_and_records_schema_later_runs_reuse_it(tmp_path):
    first = _run(tmp_path, PENGUINS_CSV, "r1")
    assert first.schema_inferred and first.anomalies == 0
    recorded = (tmp_path / "schema" / "schema.pbtxt").read_text()
    assert 'name: "species"' in recorded and "SERVING" in recorded
    second = _run(tmp_path, PENGUINS_CSV, "r2")
    assert not second.schema_inferred
    assert (tmp_path / "schema" / "schema.pbtxt").read_text() == recorded
    schema = load_schema(second.statistics_uri, tmp_path / "cache")
    label = next(f for f in schema.feature if f.name == "species")
    assert list(label.not_in_environment) == ["SERVING"]
    assert (tmp_path / "r2" / "statistics" / "train" / "FeatureStats.pb").stat().st_size > 0


def test_statistics_overview_is_a_self_contained_page(tmp_path):
    run = _run(tmp_path, PENGUINS_CSV, "r1")
    page = (tmp_path / "r1" / "statistics" / "train" / "overview.html").read_text()
    assert "<script" not in page and "http" not in page  # opens offline, fetches nothing
    for feature in ("bill_length_mm", "island", "species"):
        assert f"<td class=name>{feature}</td>" in page
    assert "3 unique; top: Biscoe" in page and page.count("<svg") == 8
    assert run.statistics_uri.endswith("statistics")


def test_new_category_fails_with_report_naming_feature(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    drifted = penguins_frame.copy()
    drifted.loc[drifted.index[:40], "island"] = "Atlantis"
    path = tmp_path / "drifted.csv"
    drifted.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r2")
    assert "island" in str(error.value)
    assert "Atlantis" in str(error.value)
    rows = error.value.report
    assert {r["feature"] for r in rows} == {"island"}
    assert (tmp_path / "r2" / "anomalies" / "report.txt").read_text().count("island") >= 1


def test_new_column_is_reported(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    path = tmp_path / "bad.csv"
    penguins_frame.assign(wingspan=1.0).to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r2")
    rows = [r for r in error.value.report if r["feature"] == "wingspan"]
    assert rows and rows[0]["expected"] == "not in the schema" and "present in" in rows[0]["observed"]


def test_wrong_type_stops_ingest_against_the_schema(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    path = tmp_path / "bad.csv"
    penguins_frame.assign(year=penguins_frame["year"].astype(str) + "y").to_csv(path, index=False)
    with pytest.raises(DataError, match=r"bad.csv: column 'year' holds '2007y' at data row 1, expected a number"):
        _run(tmp_path, path, "r2")


def test_drift_against_the_last_passing_run(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    assert _run(tmp_path, PENGUINS_CSV, "r2").baseline_run == "r1"
    heavy = penguins_frame.assign(body_mass_g=penguins_frame["body_mass_g"] * 1.6)
    path = tmp_path / "heavy.csv"
    heavy.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r3")
    drift = [r for r in error.value.report if r["feature"] == "body_mass_g"]
    assert drift and drift[0]["comparison"] == "train against the train split of run r2"
    assert "validation.drift.numeric_ks 0.1" in drift[0]["expected"] and "KS distance" in drift[0]["observed"]
    assert drift[0]["fix"].startswith("validation.drift.features: {body_mass_g: ")
    # switched off per feature in the config, the same data passes
    assert _run(tmp_path, path, "r4", validation={"drift": {"features": {"body_mass_g": None}}}).anomalies == 0


def test_curated_schema_is_authoritative_and_never_recorded(tmp_path):
    curated = tmp_path / "tiny.schema.pbtxt"
    curated.write_text(
        'feature { name: "island" type: BYTES domain: "island" }\n'
        'string_domain { name: "island" value: "Biscoe" value: "Dream" }\n'
    )
    config = load_pipeline(write_pipeline(tmp_path))
    examples = ingest_examples(config, config.data.source, str(tmp_path / "examples"), tmp_path / "work")
    recorded = tmp_path / "schema" / "schema.pbtxt"
    with pytest.raises(DataValidationError) as error:
        validate_examples(examples.uri, str(tmp_path / "statistics"), str(tmp_path / "anomalies"), str(recorded),
                          "species", tmp_path / "cache", tmp_path / "work", curated_schema=curated)
    assert "curated schema" in str(error.value) and "Torgersen" in str(error.value)
    assert {r["feature"] for r in error.value.report} >= {"island", "species"}  # species: not in the schema
    assert not recorded.exists()
    assert curated.read_text().startswith('feature { name: "island"')


def test_skew_between_eval_and_train(tmp_path):
    # splitting by island puts whole islands in eval: its island distribution is far from train's
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, PENGUINS_CSV, "r1", data={"split_key": "island", "split": {"train": 0.5, "eval": 0.5}})
    skew = {r["feature"]: r for r in error.value.report if r["comparison"] == "eval against train"}
    assert "validation.skew.categorical_linf 0.1" in skew["island"]["expected"]
    assert "validation.skew.numeric_ks 0.1" in skew["bill_length_mm"]["expected"]  # numeric features: KS
    assert "training and serving" not in str(error.value)


def test_beam_engine_computes_the_same_statistics(tmp_path):
    from tasks.bench.common import compare_statistics
    from tasks.validate import load_statistics

    streaming = _run(tmp_path, PENGUINS_CSV, "r1")
    beam = _run(tmp_path, PENGUINS_CSV, "r2", validation={"engine": "beam",
                                                          "beam_pipeline_args": ["--runner=DirectRunner"]})
    for split in ("train", "eval"):
        assert compare_statistics(load_statistics(beam.statistics_uri, split, tmp_path / "cache"),
                                   load_statistics(streaming.statistics_uri, split, tmp_path / "cache")) == []


def test_sharded_statistics_match_tfdv_whatever_thread_reads_which_shard(tmp_path, monkeypatch):
    """Shards accumulated on worker threads and merged in file order: the same counts and
    moments as TFDV's in-memory path over the whole split, the same proto on every run, and a
    damaged shard named in the error."""
    from tasks import statistics
    from tasks.bench.common import compare_statistics
    from tasks.config import config_from_mapping
    from tasks.bench.datagen import generate
    from tasks.artifacts import split_files
    from tasks.ingest import read_manifest

    source = tmp_path / "data.parquet"
    generate(source, 6000, columns=8, seed=5)
    config = config_from_mapping({"name": "shards", "data": {"source": [str(source)], "num_shards": 3},
                                  "label": "label", "task": "binary"}, "shards")
    examples = ingest_examples(config, [str(source)], str(tmp_path / "examples"), tmp_path / "work")
    manifest = read_manifest(examples.uri)
    files = split_files(tmp_path / "examples", manifest, "train")
    assert len(files) == 3
    reference = statistics.in_memory_statistics(files)
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(statistics, "usable_cpus", lambda threads=threads: threads)
        runs.append(statistics.sharded_statistics(files, manifest["columns"], batch_size=700))
    assert runs[0].datasets[0].num_examples == manifest["splits"]["train"]["count"]
    assert compare_statistics(runs[0], reference) == []
    assert runs[0] == runs[1] == runs[2]

    damaged = tmp_path / "damaged" / Path(files[1]).name
    damaged.parent.mkdir()
    damaged.write_bytes(Path(files[1]).read_bytes()[:-50])
    with pytest.raises(ValueError, match=f"{damaged.name}: truncated"):
        statistics.sharded_statistics([files[0], str(damaged), files[2]], manifest["columns"], batch_size=700)


def _healthy_table(rows=2000, seed=0):
    """What real tables hold: rare categories, a value seen once, heavy outliers, a few missing values,
    a 0/1 column with one 2, integer codes with few values."""
    rng = np.random.default_rng(seed)
    rare = [f"rare{i}" for i in range(12)]
    frame = pd.DataFrame({
        "category": rng.choice(["a", "b", "c", *rare], rows, p=[0.5, 0.3, 0.14, *[0.005] * 12]),
        "income": np.exp(rng.normal(10, 1.5, rows)),  # heavy right tail
        "flag": rng.integers(0, 2, rows),
        "rooms": rng.choice([1, 2, 3, 4, 5, 9], rows, p=[0.1, 0.3, 0.3, 0.2, 0.09, 0.01]),
        "age": rng.normal(40, 12, rows).round(),
        "species": rng.choice(["x", "y", "z"], rows),
    })
    frame.loc[rng.choice(rows, 3, replace=False), "age"] = np.nan
    frame["remark"] = None  # a column almost always empty: its two values may both be in train
    frame.loc[rng.choice(rows, 2, replace=False), "remark"] = "checked"
    frame.loc[rng.choice(rows, 1), "flag"] = 2
    frame.loc[rng.choice(rows, 4, replace=False), "income"] *= 1000
    return frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_data_passes_on_its_first_and_second_run(tmp_path, seed):
    path = tmp_path / "healthy.csv"
    _healthy_table(seed=seed).to_csv(path, index=False)
    first = _run(tmp_path, path, "r1")
    assert first.anomalies == 0 and first.schema_inferred
    second = _run(tmp_path, path, "r2")
    assert second.anomalies == 0 and second.baseline_run == "r1" and second.schema_source == "recorded"


def test_a_run_that_did_not_train_records_nothing(tmp_path):
    _run(tmp_path, PENGUINS_CSV, "r1", trained=False)
    assert not (tmp_path / "schema" / "schema.pbtxt").exists()
    assert not (tmp_path / "schema" / "baseline.json").exists()


def test_too_many_unseen_values_name_the_key_that_accepts_them(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    changed = penguins_frame.copy()
    changed.loc[changed.index[::5], "island"] = "Atlantis"  # 20% of the rows
    path = tmp_path / "changed.csv"
    changed.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r2", validation={"drift": {"categorical_linf": None}})
    rows = [r for r in error.value.report if r["feature"] == "island"]
    assert {r["comparison"] for r in rows} == {"train against the recorded schema", "eval against the recorded schema"}
    values = [float(r["fix"].removeprefix("validation.max_unseen_fraction: ")) for r in rows]
    assert all(0.18 < v < 0.3 for v in values), [r["fix"] for r in rows]  # about the 20% of new values
    assert "tfpipe schema tiny --reset" not in rows[0]["fix"]
    report = (tmp_path / "r2" / "anomalies" / "report.txt").read_text()
    assert "to accept:" in report and "Atlantis" in report
    accepted = _run(tmp_path, path, "r3", validation={"drift": {"categorical_linf": None},
                                                      "max_unseen_fraction": max(values)})
    assert accepted.anomalies == 0


def test_a_type_change_against_the_recorded_schema_names_the_reset(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    path = tmp_path / "typed.csv"
    penguins_frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r2", data={"column_types": {"year": "string"}})
    year = [r for r in error.value.report if r["feature"] == "year"]
    assert year and "tfpipe schema tiny --reset" in year[0]["fix"]
