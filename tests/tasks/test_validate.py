import pytest

from tasks.config import load_pipeline
from tasks.ingest import ingest_examples
from tasks.validate import DataValidationError, load_schema, validate_examples
from tests.conftest import PENGUINS_CSV, write_pipeline


def _run(tmp_path, source, run):
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source)}))
    examples = ingest_examples(config, config.data.source, str(tmp_path / run / "examples"), tmp_path / "work")
    return validate_examples(
        examples.uri, str(tmp_path / run / "statistics"), str(tmp_path / run / "anomalies"),
        str(tmp_path / "schema" / "schema.pbtxt"), "species", tmp_path / "cache", tmp_path / "work",
    )


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


def test_new_column_and_wrong_type_are_reported(tmp_path, penguins_frame):
    _run(tmp_path, PENGUINS_CSV, "r1")
    bad = penguins_frame.assign(wingspan=1.0, year=penguins_frame["year"].astype(str) + "y")
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as error:
        _run(tmp_path, path, "r2")
    features = {r["feature"] for r in error.value.report}
    assert {"wingspan", "year"} <= features
