"""The bad-input corpus: every malformed source, run through ``tfpipe run``, as a user would.

A good run first pushes a model (version 1) with the penguins pipeline and its curated
schema. Then each case points ``data.source`` at a defective file and runs the whole
pipeline: it must stop at ingest or validation with an error that names the file and the
column (never a bare traceback), train nothing, push nothing and leave the store as it was.
The cases that pass say why passing is right.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks import cli
from tasks.settings import Settings
from tests.helpers import PENGUINS_CSV

FRAME = pd.read_csv(PENGUINS_CSV)


def _csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _text(content: bytes):
    def build(d: Path) -> Path:
        (d / "bad.csv").write_bytes(content)
        return d / "bad.csv"
    return build


def _frame(change):
    def build(d: Path) -> Path:
        return _csv(change(FRAME.copy()), d / "bad.csv")
    return build


def _set(column, value, rows=slice(0, 40)):
    def change(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[frame.index[rows], column] = value
        return frame
    return _frame(change)


def _truncated_gzip(d: Path) -> Path:
    data = gzip.compress(PENGUINS_CSV.read_bytes())
    (d / "bad.csv.gz").write_bytes(data[: len(data) // 2])
    return d / "bad.csv.gz"


def _truncated_parquet(d: Path) -> Path:
    FRAME.to_parquet(d / "whole.parquet")
    data = (d / "whole.parquet").read_bytes()
    (d / "bad.parquet").write_bytes(data[: len(data) - 100])
    return d / "bad.parquet"


def _parquet_text_in_int(d: Path) -> Path:
    frame = FRAME.copy()
    frame["body_mass_g"] = frame["body_mass_g"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.0f}g")
    frame.to_parquet(d / "bad.parquet")
    return d / "bad.parquet"


def _good_and_bad(d: Path) -> str:
    _csv(FRAME.iloc[:200], d / "part-1.csv")
    bad = FRAME.iloc[200:].copy()
    bad["bill_length_mm"] = bad["bill_length_mm"].astype(object)
    bad.iloc[7, bad.columns.get_loc("bill_length_mm")] = "forty"
    _csv(bad, d / "part-2.csv")
    return str(d / "part-*.csv")


def _ragged(d: Path) -> Path:
    lines = PENGUINS_CSV.read_text().splitlines()
    lines[10] += ",extra"
    (d / "bad.csv").write_text("\n".join(lines) + "\n")
    return d / "bad.csv"


def _parquet_list_column(d: Path) -> Path:
    FRAME.assign(tags=[[1, 2]] * len(FRAME)).to_parquet(d / "bad.parquet")
    return d / "bad.parquet"


def _parquet_uint64(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(FRAME, preserve_index=False)
    big = pa.array([2**63 + i for i in range(len(FRAME))], pa.uint64())
    pq.write_table(table.set_column(table.schema.get_field_index("year"), "year", big), d / "bad.parquet")
    return d / "bad.parquet"


def _folder(d: Path) -> Path:
    _csv(FRAME, d / "part-0.csv")
    return d


HEADER = b"species,island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"

# name -> (build the source, where it must stop, what the message or report must name)
CASES = {
    "missing_column": (_frame(lambda f: f.drop(columns=["island"])), "validate", ("island", "Column dropped")),
    "extra_column": (_frame(lambda f: f.assign(wingspan=1.5)), "validate", ("wingspan", "New column")),
    "text_in_numeric_column": (_set("bill_length_mm", "long", slice(5, 6)), "ingest",
                               "column 'bill_length_mm' holds 'long' at data row 6"),
    "empty_file": (_text(b""), "ingest", "the file is empty"),
    "header_only": (_text(HEADER), "ingest", "no data rows"),
    "all_null_column": (_set("sex", None, slice(None)), "ingest", "column(s) ['sex'] have no value"),
    "new_category": (_set("island", "Atlantis"), "validate", ("island", "Unexpected string values")),
    "new_label_class": (_set("species", "Unicorn"), "validate", ("species", "Unexpected string values")),
    "out_of_range_high": (_set("body_mass_g", 60000), "validate", ("body_mass_g", "Out-of-range values")),
    "out_of_range_negative": (_set("bill_depth_mm", -5.0), "validate", ("bill_depth_mm", "Out-of-range values")),
    "year_in_the_past": (_set("year", 1990), "validate", ("year", "Out-of-range values")),
    "non_utf8_bytes": (_text(HEADER + b"Adelie,Tor\xffgersen,39.1,18.7,181,3750,male,2007\n" * 20), "ingest",
                       "column 'island' holds bytes that are not valid UTF-8 (data row 1)"),
    "truncated_gzip": (_truncated_gzip, "ingest", "bad.csv.gz: cannot read as CSV"),
    "truncated_parquet": (_truncated_parquet, "ingest", "bad.parquet: cannot read as Parquet"),
    "duplicated_header": (_text(HEADER.replace(b"sex", b"island") + b"Adelie,Torgersen,39.1,18.7,181,3750,Dream,2007\n"),
                          "ingest", "duplicated column(s) ['island']"),
    # Rows without a label are dropped and counted (up to data.max_unlabeled_fraction)...
    "missing_labels": (_set("species", None, slice(3, 5)), "pass", None),
    # ... and a label empty in most rows is probably the wrong column.
    "mostly_missing_labels": (_set("species", None, slice(0, 250)), "ingest",
                              "the label 'species' is empty in 250 of 344 rows (73%), more than "
                              "data.max_unlabeled_fraction (0.5) allows"),
    "infinity": (_set("bill_length_mm", "inf", slice(9, 10)), "ingest",
                 "column 'bill_length_mm' holds inf at data row 10"),
    "mostly_missing_feature": (_set("bill_length_mm", None, slice(0, 200)), "validate",
                               ("bill_length_mm", "Column dropped")),
    "good_and_bad_files": (_good_and_bad, "ingest", "part-2.csv: column 'bill_length_mm' holds 'forty' at data row 8"),
    "ragged_row": (_ragged, "ingest", "bad.csv: cannot parse as CSV: CSV parse error: Expected 8 columns, got 9"),
    "parquet_text_in_int_column": (_parquet_text_in_int, "ingest", "column 'body_mass_g' holds '3750g' at data row 1"),
    "semicolon_delimited": (_text(HEADER.replace(b",", b";") + b"Adelie;Torgersen;39.1;18.7;181;3750;male;2007\n"),
                            "ingest", "the header looks ';'-delimited: set data.delimiter"),
    "too_few_rows": (_frame(lambda f: f.iloc[[0, 200]]), "ingest", "received no rows out of 2"),
    "one_class_only": (_frame(lambda f: f.iloc[:100]), "ingest", "the label 'species' holds one value ('Adelie')"),
    "header_without_line_break": (_text(HEADER.rstrip()), "ingest", "no data rows (the file holds one line"),
    "json_named_csv": (_text(FRAME.head(20).to_json(orient="records").encode()), "ingest",
                       "no data rows (the file holds one line"),
    "tab_separated": (_text(HEADER.replace(b",", b"\t") + b"Adelie\tTorgersen\t39.1\t18.7\t181\t3750\tmale\t2007\n"),
                      "ingest", "the header looks '\\t'-delimited: set data.delimiter"),
    "thousands_separator": (_set("body_mass_g", "3,750", slice(2, 3)), "ingest",
                            "column 'body_mass_g' holds '3,750' at data row 3"),
    "integer_overflow": (_set("year", "99999999999999999999", slice(4, 5)), "ingest",
                         "column 'year' holds 1e+20 at data row 5, expected an integer"),
    "latin1_text": (_text(HEADER + "Adelie,Torgersen,39.1,18.7,181,3750,mâle,2007\n".encode("latin-1") * 20),
                    "ingest", "column 'sex' holds bytes that are not valid UTF-8 (data row 1)"),
    "parquet_list_column": (_parquet_list_column, "ingest", "column 'tags' holds [1, 2] at data row 1"),
    "a_folder": (_folder, "ingest", "is a folder; name its files"),
    "label_name_with_a_space": (_text(HEADER.replace(b"species,", b"species ,") + b"Adelie,Dream,39,18,181,3750,male,2007\n"),
                                "ingest", "'species ' has spaces around its name"),
    "uint64_past_int64": (_parquet_uint64, "ingest",
                          "column 'year' holds 9223372036854775808 at data row 1, beyond the 64-bit integer range"),
    "unnamed_index_column": (lambda d: (FRAME.to_csv(d / "bad.csv"), d / "bad.csv")[1], "ingest",
                             "column(s) [1] have no name (an index written with the data?)"),
    "one_category_only": (_set("island", "Biscoe", slice(None)), "validate", ("island", "Category distribution differs")),
    # NaN is how pandas and most exporters write a missing value; the schema allows 10% missing.
    "nan_as_missing": (_set("bill_depth_mm", "NaN", slice(0, 5)), "pass", None),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The penguins pipeline with its curated schema, after one good run that pushed version 1."""
    root = tmp_path_factory.mktemp("corpus")
    shipped = Settings.from_env({}).pipelines_dir
    shutil.copy(shipped / "penguins.yaml", root / "penguins.yaml")
    shutil.copy(shipped / "penguins.schema.pbtxt", root / "penguins.schema.pbtxt")
    saved = {k: os.environ.get(k) for k in ("TFPIPE_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["TFPIPE_HOME"] = str(root / "home")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert cli.main(["run", str(root / "penguins.yaml"), "--set", "train.epochs=8", "--run-id", "good"]) == 0
        yield root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _store_digest(home: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((home / "model_store").rglob("*")):
        digest.update(str(path.relative_to(home)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_the_corpus_has_at_least_twenty_malformed_inputs():
    assert sum(1 for _, outcome, _ in CASES.values() if outcome != "pass") >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, project, tmp_path, capsys):
    build, outcome, expected = CASES[name]
    source = build(tmp_path)
    home = project / "home"
    before = _store_digest(home)
    run_id = f"bad-{name}"
    argv = ["run", str(project / "penguins.yaml"), "--set", f"data.source={source}", "--run-id", run_id]
    code = cli.main(argv + (["--until", "validate_examples"] if outcome == "pass" else []))
    err = capsys.readouterr().err
    run_dir = home / "artifacts" / "penguins" / "runs" / run_id
    if outcome == "pass":
        assert code == 0, err
        return
    assert code == 1
    assert "Traceback" not in err
    assert not (run_dir / "model").exists()  # nothing trained
    assert _store_digest(home) == before  # nothing pushed, the champion untouched
    if outcome == "ingest":
        assert err.startswith("tfpipe: DataError: "), err
        assert expected in err, err
        shown = Path(str(source).replace("*", "2")).name if "*" in str(source) else Path(source).name
        assert shown in err
        assert not (run_dir / "examples").exists()  # nothing a later step could take as complete
    else:
        feature, anomaly = expected
        assert err.startswith("tfpipe: DataValidationError: "), err
        report = (run_dir / "anomalies" / "report.txt").read_text()
        rows = [line for line in report.splitlines() if f" {feature} " in f" {line} "]
        assert rows, report
        assert anomaly in report, report
        # the report and TFDV's statistics page are artifacts of the failed step's MLflow run
        assert {"anomalies/report.txt", "statistics/train/statistics.html"} <= _validate_artifacts(run_id)


def _validate_artifacts(run_id: str) -> set[str]:
    from tasks.settings import Settings
    from tasks.tracking import MlflowTracking

    settings = Settings.from_env()
    client = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location).client
    (run,) = client.search_runs(
        [client.get_experiment_by_name("penguins").experiment_id],
        f"tags.`airflow.task_id` = 'validate_examples' and tags.`tfpipe.run_id` = '{run_id}'",
    )
    paths, todo = set(), [None]
    while todo:
        for item in client.list_artifacts(run.info.run_id, todo.pop()):
            (todo.append(item.path) if item.is_dir else paths.add(item.path))
    return paths
