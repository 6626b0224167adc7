"""The real-table corpus (tasks/bench/corpus.py): every table loads from its package and its minimal
YAML validates; the small tables run the whole pipeline with that YAML and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tasks.config import load_pipeline
from tasks.bench.corpus import CORPUS, SMALL_ROWS, select, write_entry

# Every small table runs the whole pipeline here (about 15-30 s each on 2 cores, optimize included).
PIPELINE_ENTRIES = tuple(entry.name for entry in select(small=True))
SPLIT_CHECK_ROWS = 1000  # from this many rows on, the eval share must be near its configured 0.2
SPLIT_TOLERANCE = 0.02


def test_the_corpus_covers_what_real_tables_hold():
    assert len(CORPUS) >= 12
    assert len({entry.name for entry in CORPUS}) == len(CORPUS)
    assert {entry.task for entry in CORPUS} == {"binary", "multiclass", "regression"}
    assert max(entry.rows for entry in CORPUS) >= 20_000
    assert all(entry.rows < SMALL_ROWS for entry in select(small=True))
    assert any(entry.rows >= SPLIT_CHECK_ROWS for entry in select(small=True))  # the split check runs


@pytest.mark.parametrize("entry", CORPUS, ids=lambda entry: entry.name)
def test_table_loads_and_its_minimal_yaml_validates(entry, tmp_path):
    frame = entry.load()
    path = write_entry(entry, tmp_path)
    source = tmp_path / f"{entry.name}.csv"
    written = pd.read_csv(source)

    assert len(frame) == len(written) == entry.rows
    assert list(written.columns) == [str(column) for column in frame.columns]  # no index column
    assert entry.label in written.columns
    assert yaml.safe_load(path.read_text()) == {"data": {"source": str(source.resolve())}, "label": entry.label,
                                                "task": entry.task}
    config = load_pipeline(path)
    assert (config.name, config.label, config.task) == (entry.name, entry.label, entry.task)


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize("name", PIPELINE_ENTRIES)
def test_minimal_yaml_runs_the_whole_pipeline(name, tmp_path):
    from tasks.context import make_context
    from tasks.pipeline import run_pipeline
    from tasks.settings import Settings

    (entry,) = select([name])
    pipeline = write_entry(entry, tmp_path / "data")
    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path / "home")})
    results = run_pipeline(make_context(pipeline, run_id="corpus", settings=settings))

    assert results["validate_examples"]["anomalies"] == 0
    counts = results["ingest_examples"]["counts"]
    if entry.rows >= SPLIT_CHECK_ROWS:
        assert counts["eval"] / sum(counts.values()) == pytest.approx(0.2, abs=SPLIT_TOLERANCE), counts
    blessing = results["evaluate_model"]
    assert blessing["metrics"]["example_count"] == counts["eval"] > 0
    assert blessing["trivial"]["metrics"]["example_count"] == counts["eval"]  # the baseline is on the same examples
    # the second run of the same table: against the schema and the drift baseline the first one recorded
    again = run_pipeline(make_context(pipeline, run_id="corpus-2", settings=settings), until="validate_examples")
    second = again["validate_examples"]
    assert (second["anomalies"], second["schema_source"], second["baseline_run"]) == (0, "recorded", "corpus")
