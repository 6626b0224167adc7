"""`tfpipe check` reads a sample of the data; `tfpipe schema --reset`; the recorded-schema trap."""

import pandas as pd
import pytest
import yaml

from tasks.cli import main
from tests.helpers import PENGUINS_CSV


def _minimal(tmp_path, name, source, label, task, **more):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": str(source), **more.pop("data", {})}, "label": label,
                                    "task": task, **more}))
    return str(path)


@pytest.fixture
def penguins(tmp_path):
    frame = pd.read_csv(PENGUINS_CSV)
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_csv(tmp_path / "semicolons.csv", index=False, sep=";")
    frame.assign(sexcode=frame.sex.map({"male": 1, "female": 2})).to_csv(tmp_path / "codes.csv", index=False)
    return tmp_path


@pytest.mark.parametrize(("source", "label", "task", "message"), [
    ("p.csv", "speceis", "multiclass", "the label column 'speceis' is missing"),
    ("p.csv", "Species", "multiclass", "did you mean 'species'?"),
    ("semicolons.csv", "species", "multiclass", "the header looks ';'-delimited: set data.delimiter"),
    ("nope.csv", "species", "multiclass", "nope.csv: no such file"),
    ("p.csv", "species", "binary", "holds 3 values ('Adelie', 'Chinstrap', 'Gentoo'); task binary needs exactly two"),
    ("p.csv", "island", "regression", "holds text (e.g. 'Torgersen'); task regression needs numbers"),
])
def test_check_reads_the_data_and_names_what_to_change(penguins, home, capsys, source, label, task, message):
    assert main(["check", _minimal(penguins, "mistake", penguins / source, label, task)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM" in out and message in out and "1 problem(s)" in out


def test_check_passes_a_good_pipeline_and_explains_a_1_2_binary_label(penguins, home, capsys):
    pipeline = _minimal(penguins, "codes", penguins / "codes.csv", "sexcode", "binary")
    assert main(["check", pipeline]) == 0
    out = capsys.readouterr().out
    assert "label 'sexcode': 2 classes (1, 2); positive class '2'" in out
    assert "the label is empty in 11 rows (3.2%)" in out and "ready to run" in out
    assert "accuracy {'beat_baseline_by': 0.01, 'max_decrease': 0.01}" in out  # the default gate, shown
    assert main(["check", pipeline, "--json"]) == 0
    assert '"beat_baseline_by": 0.05' in capsys.readouterr().out


def test_schema_reset_discards_the_recorded_schema_and_the_drift_baseline(penguins, home, capsys):
    from tasks import artifacts, storage
    from tasks.settings import Settings

    settings = Settings.from_env()
    recorded = artifacts.recorded_schema_uri(settings.artifact_root, "codes")
    baseline = artifacts.baseline_statistics_uri(settings.artifact_root, "codes")
    pipeline = _minimal(penguins, "codes", penguins / "codes.csv", "sexcode", "binary")
    assert main(["schema", pipeline, "--reset"]) == 0
    assert "nothing to reset" in capsys.readouterr().out
    storage.write_bytes(recorded, b'feature { name: "sexcode" type: INT }\n')
    storage.write_bytes(baseline, b"{}")
    assert main(["check", pipeline]) == 0  # INT against numbers: agrees
    capsys.readouterr()
    assert main(["schema", pipeline, "--reset"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not storage.exists(recorded) and not storage.exists(baseline)


def test_check_names_the_reset_when_the_recorded_schema_disagrees_with_the_data(penguins, home, capsys):
    from tasks import artifacts, storage
    from tasks.settings import Settings

    recorded = artifacts.recorded_schema_uri(Settings.from_env().artifact_root, "typed")
    storage.write_bytes(recorded, b'feature { name: "island" type: INT }\n')
    assert main(["check", _minimal(penguins, "typed", penguins / "p.csv", "species", "multiclass")]) == 1
    assert "tfpipe schema typed --reset" in capsys.readouterr().out


def test_a_run_that_fails_in_training_records_no_schema_so_the_fixed_run_passes(penguins, home, capsys):
    """Following an error's advice (another column type) must not be blocked by the failed run's schema."""
    from tasks import artifacts, storage
    from tasks.settings import Settings

    (penguins / "broken_model.py").write_text("def build(spec, seed):\n    raise RuntimeError('no model today')\n")
    pipeline = _minimal(penguins, "trap", penguins / "p.csv", "species", "multiclass",
                        train={"model_fn": "broken_model:build", "epochs": 1})
    assert main(["run", pipeline, "--run-id", "r1"]) == 1
    assert "no model today" in capsys.readouterr().err
    recorded = artifacts.recorded_schema_uri(Settings.from_env().artifact_root, "trap")
    assert not storage.exists(recorded)
    assert main(["run", pipeline, "--run-id", "r2", "--until", "validate_examples",
                 "--set", "data.column_types.year=string"]) == 0


def test_a_bad_value_in_a_column_typed_by_the_recorded_schema_names_the_reset(penguins, home, capsys):
    from tasks import artifacts, storage
    from tasks.settings import Settings

    recorded = artifacts.recorded_schema_uri(Settings.from_env().artifact_root, "typed")
    storage.write_bytes(recorded, b'feature { name: "island" type: INT }\n')
    pipeline = _minimal(penguins, "typed", penguins / "p.csv", "species", "multiclass")
    assert main(["run", pipeline, "--until", "ingest_examples"]) == 1
    err = capsys.readouterr().err
    assert "column 'island' holds 'Torgersen'" in err
    assert "the type of 'island' comes from the recorded schema" in err and "tfpipe schema typed --reset" in err
