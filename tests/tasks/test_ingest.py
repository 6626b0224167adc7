import gzip
import json
import re
import subprocess
import sys

import pandas as pd
import pyarrow as pa
import pytest

from tasks.config import ConfigError, load_pipeline
from tasks.ingest import DataError, ingest_examples, read_manifest
from tasks.validate import read_split_record_batch
from tests.helpers import write_pipeline


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


def test_the_examples_handle_reads_the_manifest_once_and_names_each_splits_shards(tmp_path, pipeline_file):
    from tasks.artifacts import Examples
    from tasks.storage import ArtifactNotFoundError

    result = _ingest(tmp_path, load_pipeline(pipeline_file))
    examples = Examples.open(result.uri)
    assert sorted(examples.splits) == ["eval", "train"] and examples.count("train") == result.counts["train"]
    assert examples.columns["island"] == "string" and examples.sources[0]["rows"] == 344
    files = examples.files("eval", tmp_path / "cache")
    assert len(files) == 2 and all(str(tmp_path / "examples") in f for f in files)
    (tmp_path / "examples" / "manifest.json").unlink()  # what the handle read stays as it was
    assert examples.count("eval") == result.counts["eval"]
    with pytest.raises(KeyError, match="no split 'test'"):
        examples.files("test", tmp_path / "cache")
    (tmp_path / "examples" / "_SUCCESS").unlink()
    with pytest.raises(ArtifactNotFoundError):
        Examples.open(result.uri)


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


def test_rerun_writes_identical_bytes(tmp_path, pipeline_file):
    config = load_pipeline(pipeline_file)
    _ingest(tmp_path, config, "one")
    _ingest(tmp_path, config, "two")
    for rel in read_manifest(str(tmp_path / "one"))["splits"]["train"]["files"]:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


def test_csv_and_parquet_give_the_same_examples(tmp_path, penguins_frame):
    penguins_frame.to_parquet(tmp_path / "p.parquet")
    penguins_frame.to_csv(tmp_path / "p.csv", index=False)
    frames = []
    for name in ("p.parquet", "p.csv"):
        config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / name)}))
        result = _ingest(tmp_path, config, f"out-{name}")
        frames.append(read_split_record_batch(tmp_path / f"out-{name}", read_manifest(result.uri), "train").to_pandas())
    key = ["bill_length_mm", "bill_depth_mm", "body_mass_g", "island", "sex", "year"]
    a, b = (f.applymap(lambda v: None if v is None else v[0]) for f in frames)
    pd.testing.assert_frame_equal(a.sort_values(key, na_position="first").reset_index(drop=True),
                                  b[a.columns].sort_values(key, na_position="first").reset_index(drop=True))


def test_integer_column_with_a_late_fraction_is_widened_to_float(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.sources.CSV_BLOCK_BYTES", 64 << 10)  # types are inferred from the first block
    rows = ["label,x,c"] + [f"{i % 2},{i},c{i % 3}" for i in range(60_000)] + ["1,2.5,c1"]
    source = tmp_path / "late.csv"
    source.write_text("\n".join(rows) + "\n")
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source)}, label="label", task="binary"))
    result = _ingest(tmp_path, config)
    assert result.widened == {"x": "float"} and result.columns["x"] == "float"
    assert result.rows == 60_001


def test_text_in_a_declared_numeric_column_names_row_and_value(tmp_path, monkeypatch):
    monkeypatch.setattr("tasks.sources.CSV_BLOCK_BYTES", 64 << 10)
    rows = ["label,x"] + [f"{i % 2},{i}" for i in range(50_000)] + ["1,twelve"]
    source = tmp_path / "text.csv"
    source.write_text("\n".join(rows) + "\n")
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source), "column_types": {"x": "int"}},
                                          label="label", task="binary"))
    with pytest.raises(DataError) as error:
        _ingest(tmp_path, config)
    assert "text.csv" in str(error.value) and "'x'" in str(error.value)
    assert "'twelve' at data row 50001" in str(error.value)


def test_peak_memory_does_not_grow_with_rows(tmp_path):
    """Ingest N and 4N rows in fresh processes: the peak RSS may grow by at most 20%."""
    from tasks.bench.datagen import generate

    script = (
        "import resource, sys; from pathlib import Path\n"
        "from tasks.config import config_from_mapping\n"
        "from tasks.ingest import ingest_examples\n"
        "cfg = config_from_mapping({'name': 'm', 'data': {'source': [sys.argv[1]]}, 'label': 'label',"
        " 'task': 'binary'}, 'memory')\n"
        "ingest_examples(cfg, [sys.argv[1]], sys.argv[2], Path(sys.argv[3]))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    peaks = {}
    for rows in (150_000, 600_000):
        source = tmp_path / f"{rows}.csv"
        generate(source, rows, columns=20, seed=rows)
        out = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / f"out{rows}"),
                              str(tmp_path / "work")], capture_output=True, text=True, check=True)
        peaks[rows] = int(out.stdout.split()[-1])
    assert peaks[600_000] <= 1.2 * peaks[150_000], peaks


def test_parquet_and_several_files(tmp_path, penguins_frame):
    penguins_frame.iloc[:200].to_parquet(tmp_path / "a.parquet")
    penguins_frame.iloc[200:].to_parquet(tmp_path / "b.parquet")
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "*.parquet")}))
    result = _ingest(tmp_path, config)
    assert sum(result.counts.values()) == 344
    assert [s["rows"] for s in read_manifest(result.uri)["sources"]] == [200, 144]


def test_sources_over_https_and_other_filesystems_read_through_fsspec(tmp_path, penguins_frame):
    """A file and a glob served over HTTP give what the same local files give; a filesystem whose
    package is missing, a scheme tfpipe does not read and a missing file are errors that say so."""
    from tests.servers import http_folder

    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    penguins_frame.iloc[:200].to_parquet(served / "a.parquet")
    penguins_frame.iloc[200:].to_parquet(served / "b.parquet")
    penguins_frame.to_csv(served / "penguins.csv", index=False)
    local = _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": str(served / "penguins.csv")})),
                    "out-local")
    with http_folder(tmp_path / "served") as url:
        one = _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": f"{url}/data/penguins.csv"})),
                      "out-one")
        globbed = _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": f"{url}/data/*.parquet"})),
                          "out-glob")
        with pytest.raises(DataError, match="no such file"):
            _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": f"{url}/data/gone.csv"})), "x")
    assert one.counts == local.counts and read_manifest(one.uri)["sources"][0]["uri"] == f"{url}/data/penguins.csv"
    assert [s["rows"] for s in read_manifest(globbed.uri)["sources"]] == [200, 144]
    with pytest.raises(DataError, match="gcsfs"):  # Google Cloud Storage's package is not installed here
        _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": "gs://bucket/penguins.csv"})), "x")
    with pytest.raises(DataError, match="ftp:// is not a source tfpipe reads"):
        _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": "ftp://127.0.0.1/p.csv"})), "x")
    with pytest.raises(ConfigError, match="credentials do not belong") as refused:  # before anything logs the config
        load_pipeline(write_pipeline(tmp_path, data={"source": "https://u:s3cr3t@127.0.0.1/p.csv"}))
    assert "s3cr3t" not in str(refused.value)
    for chained in ("simplecache::https://127.0.0.1/p.csv", "zip://p.csv::https://127.0.0.1/a.zip",
                    "https://127.0.0.1/p.csv::zip://p.csv"):
        with pytest.raises(DataError, match="chained URLs|is not a source tfpipe reads"):
            _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": chained})), "x")


def test_source_template_selects_the_partition(tmp_path, penguins_frame):
    from tasks.ingest import render_sources

    assert render_sources(["s3://b/date={{ ds }}/*.csv"], {"ds": "2026-01-02"}) == ["s3://b/date=2026-01-02/*.csv"]
    with pytest.raises(DataError, match=r"unknown variable \{\{ nope \}\}"):
        render_sources(["x/{{ nope }}.csv"], {"ds": "2026-01-02"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"species,island\n", "no data rows"),
        (b"island,bill_length_mm\nDream,40\n", "label column 'species' is missing"),
        (b"species,island\nAdelie,Dream\n,Biscoe\n,Dream\n", "label 'species' is empty in 2 of 3 rows (67%)"),
        (b"species,island\nAdelie,Dream\nAdelie,Biscoe\n", "holds one value ('Adelie')"),
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
    with pytest.raises(DataError, match=r"nope-\*\.csv: no file matches"):
        _ingest(tmp_path, config)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "nope.csv")}))
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        _ingest(tmp_path, config)
    (tmp_path / "exports").mkdir()
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "exports")}))
    with pytest.raises(DataError, match=r"exports: is a folder; name its files, e.g. .*exports/\*\.parquet"):
        _ingest(tmp_path, config)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(tmp_path, penguins_frame, delimiter):
    source = tmp_path / "penguins.txt"
    penguins_frame.to_csv(source, index=False, sep=delimiter)
    comma = tmp_path / "penguins.csv"
    penguins_frame.to_csv(comma, index=False)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source), "format": "csv"}))
    with pytest.raises(DataError, match=re.escape(f"the header looks {delimiter!r}-delimited: set data.delimiter")):
        _ingest(tmp_path, config)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source), "format": "csv",
                                                          "delimiter": delimiter}))
    ours = _ingest(tmp_path / "other", config)
    reference = _ingest(tmp_path / "comma", load_pipeline(write_pipeline(tmp_path, data={"source": str(comma)})))
    assert ours.counts == reference.counts and ours.columns == reference.columns


def test_quoted_line_breaks_stay_in_their_value(tmp_path, penguins_frame):
    frame = penguins_frame.copy()
    frame["sex"] = frame["sex"].astype(object)
    frame.loc[frame.index[::7], "sex"] = "fe\nmale"  # a line break inside a quoted value
    source = tmp_path / "penguins.csv"
    frame.to_csv(source, index=False)
    config = load_pipeline(write_pipeline(tmp_path, data={"source": str(source)}))
    result = _ingest(tmp_path, config)
    assert result.rows == len(frame)


def test_delimiter_must_be_one_plain_character(tmp_path):
    for bad in (";;", "", "\n", '"'):
        with pytest.raises(ConfigError, match="delimiter"):
            load_pipeline(write_pipeline(tmp_path, data={"source": "x.csv", "delimiter": bad}))


def test_manifest_is_json(tmp_path, pipeline_file):
    result = _ingest(tmp_path, load_pipeline(pipeline_file))
    assert json.loads((tmp_path / "examples" / "manifest.json").read_text())["label"] == "species" == result.label


def test_s3_partition_per_run_date(tmp_path, monkeypatch, penguins_frame):
    """A templated S3 glob: each run date (a scheduled run, a backfill) reads only its partition."""
    import boto3

    from tasks import storage
    from tasks.ingest import render_sources
    from tests.servers import moto_s3

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        try:
            s3 = boto3.client("s3")
            s3.create_bucket(Bucket="lake")
            mixed = penguins_frame.sample(frac=1.0, random_state=0)  # every day holds every species
            parts = {"2026-01-01": [mixed.iloc[:100], mixed.iloc[100:150]], "2026-01-02": [mixed.iloc[150:]]}
            for day, frames in parts.items():
                for i, frame in enumerate(frames):
                    frame.to_parquet(tmp_path / "part.parquet")
                    s3.upload_file(str(tmp_path / "part.parquet"), "lake", f"penguins/date={day}/part-{i}.parquet")
            config = load_pipeline(write_pipeline(
                tmp_path, data={"source": "s3://lake/penguins/date={{ ds }}/*.parquet"}))
            for day, frames in parts.items():
                sources = render_sources(config.data.source, {"ds": day})
                result = ingest_examples(config, sources, str(tmp_path / day), tmp_path / "work")
                manifest = read_manifest(result.uri)
                assert [s["uri"] for s in manifest["sources"]] == [
                    f"s3://lake/penguins/date={day}/part-{i}.parquet" for i in range(len(frames))]
                assert result.rows == sum(len(f) for f in frames)
            assert not list((tmp_path / "work").iterdir())  # downloads removed with the scratch space
        finally:
            storage.reset_clients()


def test_integers_past_int64_can_be_declared_float(tmp_path, penguins_frame):
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(penguins_frame, preserve_index=False)
    big = pa.array([2**63 + 2**40 * i for i in range(len(penguins_frame))], pa.uint64())
    pq.write_table(table.append_column("serial", big), tmp_path / "big.parquet")
    data = {"source": str(tmp_path / "big.parquet")}
    with pytest.raises(DataError, match=r"'serial' holds 9223372036854775808 at data row 1, beyond the 64-bit"):
        _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data=data)))
    declared = load_pipeline(write_pipeline(tmp_path, data={**data, "column_types": {"serial": "float"}}))
    result = _ingest(tmp_path / "declared", declared)
    assert result.columns["serial"] == "float" and result.rows == len(penguins_frame)


def test_a_value_past_the_csv_modules_field_limit_is_read(tmp_path, penguins_frame):
    frame = penguins_frame.copy()
    frame["island"] = frame["island"].astype(object)
    frame.loc[frame.index[2], "island"] = "x" * 300_000  # the csv module's sniffing would refuse it
    frame.to_csv(tmp_path / "long.csv", index=False)
    result = _ingest(tmp_path, load_pipeline(write_pipeline(tmp_path, data={"source": str(tmp_path / "long.csv")})))
    assert result.rows == len(frame)


def test_s3_sources_are_globbed_by_fsspec_like_local_ones(tmp_path, monkeypatch):
    """s3fs lists and globs S3 sources: ``*`` stays within one folder, ``?`` and ``[...]`` glob,
    and a pattern that matches nothing names itself."""
    import boto3

    from tasks import storage
    from tasks.sources import resolve_sources
    from tests.servers import moto_s3

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lake")
        for key in ("t/a1.csv", "t/a2.csv", "t/b1.csv", "t/sub/a3.csv", "t/a1.parquet"):
            s3.put_object(Bucket="lake", Key=key, Body=b"x,y\n1,2\n")
        uris = lambda pattern: [s.uri for s in resolve_sources([pattern])]  # noqa: E731
        assert uris("s3://lake/t/*.csv") == ["s3://lake/t/a1.csv", "s3://lake/t/a2.csv", "s3://lake/t/b1.csv"]
        assert uris("s3://lake/t/a?.csv") == ["s3://lake/t/a1.csv", "s3://lake/t/a2.csv"]
        assert uris("s3://lake/t/[b]*") == ["s3://lake/t/b1.csv"]
        assert uris("s3://lake/t/sub/a3.csv") == ["s3://lake/t/sub/a3.csv"]
        for missing in ("s3://lake/t/*.json", "s3://lake/t/none.csv"):
            with pytest.raises(DataError, match=re.escape(missing)):
                resolve_sources([missing])
        storage.reset_clients()
