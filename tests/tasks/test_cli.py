"""`tfpipe run` in-process: the same steps without Airflow, tracked in the embedded MLflow store."""

import json

import pytest

from tasks.cli import main
from tasks.settings import Settings
from tasks.tracking import MlflowTracking
from tests.helpers import write_pipeline


def test_run_until_a_step_tracks_it_and_stops(tmp_path, home, capsys):
    pipeline = write_pipeline(tmp_path, name="clirun")
    assert main(["run", str(pipeline), "--until", "validate_examples", "--run-id", "r1",
                 "--set", "data.num_shards=1"]) == 0
    out = capsys.readouterr().out
    assert "validate_examples done" in out and "train_model done" not in out
    runs = home / "artifacts" / "clirun" / "runs" / "r1"
    assert (runs / "examples" / "train" / "data-00000-of-00001.tfrecord.gz").is_file()
    # recorded only by a run that also trains: a run stopped (or failing) before leaves none behind
    assert not (home / "artifacts" / "clirun" / "schema" / "schema.pbtxt").exists()
    settings = Settings.from_env()
    summary = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location).pipeline_summary("clirun", "r1")
    assert set(summary["durations"]) == {"ingest_examples", "validate_examples"}
    assert summary["status"] == "FINISHED"  # stopped on purpose: ended, never left RUNNING
    parent = MlflowTracking(settings.tracking_uri).client.get_run(summary["parent_run_id"])
    assert parent.data.tags["tfpipe.outcome"] == "stopped_after_validate_examples"


def test_the_data_each_run_reads_is_an_mlflow_dataset_input(tmp_path, home, capsys):
    """Ingest logs the sources (and so does the parent run), validate the examples it checks;
    the same data has the same digest in every run, changed data another."""
    import json

    from tests.helpers import PENGUINS_CSV

    pipeline = write_pipeline(tmp_path, name="lineage")
    changed = tmp_path / "changed.csv"
    changed.write_text(PENGUINS_CSV.read_text().replace("39.1", "39.2", 1))
    for run, extra in (("r1", []), ("r2", []), ("r3", ["--set", f"data.source={changed}"])):
        assert main(["run", str(pipeline), "--until", "validate_examples", "--run-id", run, *extra]) == 0, \
            capsys.readouterr().err
    settings = Settings.from_env()
    tracking = MlflowTracking(settings.tracking_uri)
    digests = {}
    for run in ("r1", "r2", "r3"):
        summary = tracking.pipeline_summary("lineage", run)
        parent = tracking.client.get_run(summary["parent_run_id"])
        children = tracking.client.search_runs([parent.info.experiment_id],
                                               f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        inputs = {c.data.tags["airflow.task_id"]: c.inputs.dataset_inputs for c in children}
        for step, context in (("ingest_examples", "source"), ("validate_examples", "validation")):
            (entry,) = inputs[step]
            assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == context
        (entry,) = parent.inputs.dataset_inputs
        dataset = entry.dataset
        assert dataset.name == "lineage" and dataset.source_type == "local"
        assert json.loads(dataset.profile)["num_rows"] == 344
        columns = {c["name"]: c["type"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
        assert columns["bill_length_mm"] == "double" and columns["species"] == "string"
        digests[run] = dataset.digest
    assert digests["r1"] == digests["r2"] != digests["r3"]


def test_the_model_is_an_mlflow_logged_model_with_its_metrics_versions_and_card(tmp_path, home, capsys):
    """MLflow 3 natively: train_model's output is a logged model (pyfunc, params); evaluate's
    metrics are linked to it and to the eval data; evaluate, optimize and push read it; the
    registry version comes from it and has the model card."""
    import mlflow.artifacts
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.entities import LoggedModelStatus

    from tests.helpers import PENGUINS_CSV

    pipeline = write_pipeline(tmp_path, name="native", optimize={"variants": ["tflite_float32"]})
    assert main(["run", str(pipeline), "--run-id", "r1", "--set", "train.epochs=2"]) == 0, capsys.readouterr().err
    tracking = MlflowTracking(Settings.from_env().tracking_uri)
    client = tracking.client
    parent = client.get_run(tracking.pipeline_summary("native", "r1")["parent_run_id"])
    children = {c.data.tags["airflow.task_id"]: c for c in client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    (output,) = children["train_model"].outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.status == LoggedModelStatus.READY and model.source_run_id == children["train_model"].info.run_id
    assert model.params["train.epochs"] == "2" and model.tags["tfpipe.pipeline"] == "native"
    for step in ("evaluate_model", "optimize_model", "push_model"):
        run = client.get_run(children[step].info.run_id)  # search results leave model inputs out
        assert [m.model_id for m in run.inputs.model_inputs] == [model.model_id], step
    linked = {m.key: m for m in model.metrics}
    (dataset,) = children["evaluate_model"].inputs.dataset_inputs
    assert linked["accuracy"].value == children["evaluate_model"].data.metrics["accuracy"]
    assert linked["accuracy"].dataset_digest == dataset.dataset.digest
    assert "tflite_float32.size_bytes" in linked
    # The kept variants are artifacts of the model they were made from.
    variants = {f.path for f in client.list_logged_model_artifacts(model.model_id, "variants")}
    assert {"variants/model_float32.tflite", "variants/report.json"} <= variants
    version = client.get_model_version_by_alias("native", "champion")
    assert version.source == f"models:/{model.model_id}" and version.run_id == model.source_run_id
    assert json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"]) == [
        {"name": "native", "version": version.version}]
    card = mlflow.artifacts.load_text(version.tags["model_card"].replace(".html", ".md"))
    assert model.model_id in card and "Model card: native v1" in card
    loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri("native", version.version))
    frame = pd.read_csv(PENGUINS_CSV).drop(columns="species").head(3)
    frame = frame.astype({c: "float64" for c in frame.select_dtypes("number").columns})  # the signature's doubles
    assert len(loaded.predict(frame)["predicted_class"]) == 3


def test_with_cache_on_unchanged_steps_are_reused_and_changed_ones_run(tmp_path, home, capsys):
    """cache: true. A second run of unchanged data, config and code reuses ingest, train and
    optimize (validate and evaluate run again: the first run recorded the schema and pushed the
    champion they read) and pushes nothing (the weights are the champion's); a third reuses every
    step. A changed setting runs the steps that read it; an artifact that is gone is not reused."""
    import shutil

    def run(run_id: str, *extra: str) -> str:
        assert main(["run", str(pipeline), "--run-id", run_id, *extra]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    pipeline = write_pipeline(tmp_path, name="cached", cache=True, train={"epochs": 2, "deterministic": True},
                              optimize={"variants": ["tflite_float32"]})
    assert "pushed: version 1" in run("r1")
    second = run("r2")
    for step in ("ingest_examples", "train_model", "optimize_model"):
        assert f"[tfpipe] {step} reused from run r1" in second, step
    assert "[tfpipe] validate_examples done" in second and "[tfpipe] evaluate_model done" in second
    assert "the weights equal those of the champion v1" in second
    third = run("r3")
    assert all(f"[tfpipe] {step} reused from run" in third for step in
               ("ingest_examples", "validate_examples", "train_model", "evaluate_model", "optimize_model"))
    # The reused runs say so in MLflow, with the lineage a computed one logs.
    tracking = MlflowTracking(Settings.from_env().tracking_uri)
    parent = tracking.client.get_run(tracking.pipeline_summary("cached", "r3")["parent_run_id"])
    children = {c.data.tags["airflow.task_id"]: c for c in tracking.client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    train = tracking.client.get_run(children["train_model"].info.run_id)
    assert train.data.tags["tfpipe.reused_from_run"] == "r1" and train.data.tags["tfpipe.cache_key"]
    first_model = tracking.client.search_logged_models([parent.info.experiment_id])[-1].model_id
    assert [o.model_id for o in train.outputs.model_outputs] == [first_model]
    assert train.inputs.dataset_inputs and parent.data.tags["tfpipe.blessed"] == "true"
    # A changed setting: the steps that read it run, the others are reused.
    changed = run("r4", "--set", "train.epochs=3")
    assert "[tfpipe] ingest_examples reused from run r1" in changed and "[tfpipe] train_model done" in changed
    # A record whose artifacts are gone is not reused.
    shutil.rmtree(home / "artifacts" / "cached" / "runs" / "r1" / "examples")
    assert "[tfpipe] ingest_examples done" in run("r5", "--until", "ingest_examples")


def test_a_run_records_what_rerunning_it_needs_and_reruns_to_the_same_model(tmp_path, home, capsys):
    """rerun.json: the resolved config and its overrides, code, lock file and data digests; tfpipe
    rerun runs it again and reports what is the same (deterministic training: the same weights)."""
    import hashlib

    from tests.helpers import PENGUINS_CSV

    pipeline = write_pipeline(tmp_path, name="again", train={"epochs": 2, "deterministic": True})
    assert main(["run", str(pipeline), "--run-id", "r1", "--until", "train_model",
                 "--set", "train.learning_rate=0.03"]) == 0, capsys.readouterr().err
    record = json.loads((home / "artifacts" / "again" / "runs" / "r1" / "rerun.json").read_text())
    assert record["overrides"] == {"train.learning_rate": 0.03} and record["config"]["train"]["learning_rate"] == 0.03
    assert record["data"] == [{"uri": str(PENGUINS_CSV), "rows": 344,
                               "sha256": hashlib.sha256(PENGUINS_CSV.read_bytes()).hexdigest()}]
    assert record["code"]["digest"] and record["code"]["lock_sha256"] and record["pipeline_file"] == str(pipeline)
    tracking = MlflowTracking(Settings.from_env().tracking_uri)
    parent = tracking.pipeline_summary("again", "r1")["parent_run_id"]
    assert "rerun.json" in {a.path for a in tracking.client.list_artifacts(parent)}
    capsys.readouterr()
    assert main(["rerun", "again", "r1", "--run-id", "r2", "--until", "train_model"]) == 0, capsys.readouterr().err
    report = capsys.readouterr().out
    for line in ("config: the same", "code:   the same", "lock:   the same", "data:   the same",
                 "model:  weights the same"):
        assert line in report, report
    # A pipeline file that resolves differently now is named, not silently run.
    pipeline.write_text(pipeline.read_text().replace("epochs: 2", "epochs: 3"))
    assert main(["rerun", "again", "r1", "--until", "ingest_examples"]) == 1
    assert "different: train.epochs" in capsys.readouterr().err
    assert main(["rerun", "again", "never-ran"]) == 1
    assert "recorded nothing to re-run it from" in capsys.readouterr().err


def test_failing_step_exits_nonzero_with_its_error(tmp_path, home, capsys):
    pipeline = write_pipeline(tmp_path, name="clifail", data={"source": str(tmp_path / "missing.csv")})
    assert main(["run", str(pipeline), "--run-id", "r1"]) == 1
    err = capsys.readouterr().err
    assert "DataError" in err and "missing.csv" in err
    settings = Settings.from_env()
    summary = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location).pipeline_summary("clifail", "r1")
    assert summary["status"] == "FAILED"


def test_bad_override_exits_2_naming_the_key(tmp_path, home, capsys):
    assert main(["run", str(write_pipeline(tmp_path)), "--set", "train.epoks=3"]) == 2
    assert "train.epoks: unknown key" in capsys.readouterr().err


def test_datagen_writes_learnable_data_and_a_pipeline_that_runs(tmp_path, home, capsys):
    import pandas as pd

    data, config = tmp_path / "synth.parquet", tmp_path / "synth.yaml"
    assert main(["datagen", str(data), "--rows", "3000", "--columns", "12", "--task", "multiclass",
                 "--pipeline", str(config)]) == 0
    frame = pd.read_parquet(data)
    assert frame.shape == (3000, 12) and set(frame["label"]) == {"class_a", "class_b", "class_c"}
    assert 0.005 < frame.drop(columns="label").isna().mean().mean() < 0.05  # missing values
    import pyarrow.parquet as pq

    assert {"double", "int64", "string"} <= {str(f.type) for f in pq.read_schema(data)}
    again = tmp_path / "again.parquet"
    main(["datagen", str(again), "--rows", "3000", "--columns", "12", "--task", "multiclass"])
    pd.testing.assert_frame_equal(frame, pd.read_parquet(again))  # same seed, same data
    # a run records its schema and becomes the drift baseline once it has also trained
    assert main(["run", str(config), "--until", "train_model", "--run-id", "s1", "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    # drift is caught against the run that passed; the schema in force is printed
    main(["datagen", str(data), "--rows", "3000", "--columns", "12", "--task", "multiclass", "--drift", "1",
          "--seed", "7"])
    assert main(["run", str(config), "--until", "validate_examples", "--run-id", "s2"]) == 1
    assert "DataValidationError" in capsys.readouterr().err
    assert main(["schema", str(config)]) == 0
    assert capsys.readouterr().out.startswith("# recorded schema:")
    assert main(["schema", str(config), "--curate"]) == 0
    assert (tmp_path / "synth.schema.pbtxt").read_text().startswith("# Curated from")
    assert main(["schema", str(config)]) == 0
    assert "# curated schema (authoritative)" in capsys.readouterr().out


def test_datagen_corruption_is_caught_by_ingest(tmp_path, home, capsys):
    # Parquet: typed columns, so a defect is a bad value (infinity) rather than a column read as text.
    data = tmp_path / "dirty.parquet"
    assert main(["datagen", str(data), "--rows", "2000", "--corrupt", "0.05", "--pipeline",
                 str(tmp_path / "dirty.yaml")]) == 0
    assert main(["run", str(tmp_path / "dirty.yaml"), "--until", "validate_examples"]) == 1
    err = capsys.readouterr().err
    assert "DataError" in err and "dirty.parquet" in err and "at data row" in err


def _train_run(client, pipeline: str, run_id: str):
    experiment = client.get_experiment_by_name(pipeline)
    (run,) = client.search_runs([experiment.experiment_id],
                                f"tags.`airflow.task_id` = 'train_model' and tags.`tfpipe.run_id` = '{run_id}'")
    return run


@pytest.mark.parametrize(("strategy", "extra", "replicas", "workers", "nodes"), [
    ("multi_worker", [], "2", "2", ["worker-0", "worker-1"]),
    # TensorFlow already ran in this process (ingest, validate): the CPU split needs a fresh one.
    ("mirrored", ["--set", "train.cpu_replicas=2"], "2", "1", ["worker-0"]),
    # A chief coordinating two workers (one replica each) and a parameter server.
    ("parameter_server", [], "1", "2", ["chief-0", "worker-0", "worker-1", "ps-0"]),
])
def test_distributed_training_from_tfpipe_run(tmp_path, home, strategy, extra, replicas, workers, nodes):
    from mlflow import MlflowClient

    pipeline = write_pipeline(tmp_path, name=f"dist_{strategy}")
    assert main(["run", str(pipeline), "--until", "train_model", "--run-id", "r1", "--set", f"train.strategy={strategy}",
                 "--set", "train.epochs=4", *extra]) == 0
    run = _train_run(MlflowClient(Settings.from_env().tracking_uri), f"dist_{strategy}", "r1")
    assert run.data.tags["tfpipe.replicas"] == replicas and run.data.tags["tfpipe.workers"] == workers
    assert run.data.metrics["final_eval_accuracy"] > 0.6
    # Every worker's system metrics, apart by node id; the per-epoch metrics from the chief only.
    for node in nodes:
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics
    client = MlflowClient(Settings.from_env().tracking_uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_loss")] == [1, 2, 3, 4]


def test_columns_with_any_names_run_end_to_end(tmp_path, home, penguins_frame):
    """Real-world headers: dots, dashes, spaces, parentheses, other scripts. The model names what
    TensorFlow refuses f<i>_..., keeps the rest, and every step through the push works."""
    import tensorflow as tf

    from tasks.training.model import tensor_name

    renamed = {"bill_length_mm": "bill length (mm)", "bill_depth_mm": "bill.depth", "flipper_length_mm":
               "flipper-length", "body_mass_g": "Körpermasse", "island": "island", "year": "class"}
    source = tmp_path / "odd.csv"
    penguins_frame.rename(columns=renamed).to_csv(source, index=False)
    pipeline = write_pipeline(tmp_path, name="odd", data={"source": str(source)},
                              optimize={"variants": ["tflite_float32"]})
    assert main(["run", str(pipeline), "--run-id", "r1", "--set", "train.epochs=8"]) == 0
    assert (home / "model_store" / "odd" / "1" / "saved_model.pb").is_file()
    signature = tf.saved_model.load(str(home / "model_store" / "odd" / "1")).signatures["predict_features"]
    keys = set(signature.structured_input_signature[1])
    features = [c for c in penguins_frame.rename(columns=renamed).columns if c != "species"]
    assert features[:5] == ["island", "bill length (mm)", "bill.depth", "flipper-length", "Körpermasse"]
    assert keys == {"island", "f1_bill_length_mm_", "f2_bill_depth", "f3_flipper_length", "f4_K_rpermasse", "sex",
                    "f6_class"}
    assert tensor_name("", 7) == "f7_" and tensor_name("2nd", 0) == "f0_2nd"
    assert tensor_name("yield", 3) == "f3_yield" and tensor_name("class", 1) == "f1_class"  # Python keywords
    row = penguins_frame.rename(columns=renamed).dropna().iloc[:3]
    inputs = {tensor_name(c, i): tf.constant(row[c].to_numpy(dtype="float32" if row[c].dtype.kind == "f" else None))
              for i, c in enumerate(features)}
    scores = signature(**inputs)["scores"].numpy()
    assert scores.shape == (3, 3)


def test_integer_class_codes_and_boolean_columns(tmp_path, home, capsys):
    """Class codes as numbers (3, 5, 8) are the classes of a multiclass label; a True/False column
    stays a boolean on the second run too, when the recorded schema says int."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    x = rng.normal(size=900)
    frame = pd.DataFrame({"x": x, "flag": x > 0.3, "noise": rng.normal(size=900),
                          "grade": np.array([3, 5, 8])[np.digitize(x, [-0.4, 0.4])]})
    frame.to_csv(tmp_path / "grades.csv", index=False)
    pipeline = write_pipeline(tmp_path, name="grades", data={"source": str(tmp_path / "grades.csv")}, label="grade",
                              gate={"metrics": {"accuracy": {"lower_bound": 0.6}}},
                              optimize={"variants": ["tflite_float32"]})
    assert main(["run", str(pipeline), "--run-id", "r1", "--set", "train.epochs=10"]) == 0, capsys.readouterr().err
    spec = json.loads((home / "artifacts" / "grades" / "runs" / "r1" / "model" / "model_spec.json").read_text())
    assert spec["label_vocabulary"] == ["3", "5", "8"]
    assert main(["run", str(pipeline), "--run-id", "r2", "--until", "validate_examples"]) == 0, capsys.readouterr().err

    frame.assign(grade=np.where(frame.grade == 3, 1, 2)).to_csv(tmp_path / "binary.csv", index=False)
    pipeline = write_pipeline(tmp_path, name="binary12", data={"source": str(tmp_path / "binary.csv")},
                              label="grade", task="binary")
    capsys.readouterr()
    # A binary label written 1 and 2 (as many surveys code no and yes): two class names, '2' positive.
    assert main(["run", str(pipeline), "--run-id", "r1", "--until", "train_model"]) == 0, capsys.readouterr().err
    spec = json.loads((home / "artifacts" / "binary12" / "runs" / "r1" / "model" / "model_spec.json").read_text())
    assert spec["label_vocabulary"] == ["1", "2"] and spec["label_kind"] == "string"
    # 0.0 and 1.0, as some exporters write a binary label, train as 0 and 1.
    frame.assign(grade=np.where(frame.grade == 3, 0.0, 1.0)).to_csv(tmp_path / "floats.csv", index=False,
                                                                   float_format="%.1f")
    pipeline = write_pipeline(tmp_path, name="binaryfloat", data={"source": str(tmp_path / "floats.csv")},
                              label="grade", task="binary")
    assert main(["run", str(pipeline), "--run-id", "r1", "--until", "train_model"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("tool, usage", [("airflow", "Usage: airflow [-h] GROUP_OR_COMMAND"),
                                         ("mlflow", "Usage: mlflow [OPTIONS] COMMAND")])
def test_airflow_and_mlflow_pass_their_options_through(tmp_path, tool, usage):
    """`tfpipe airflow --help` is airflow's help (the command execs the tool, so it runs apart)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TFPIPE_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "tasks.cli", tool, "--help"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert usage in proc.stdout and "unrecognized arguments" not in proc.stderr


def test_airflow_waits_for_a_busy_sqlite_database_and_leaves_other_databases_alone(tmp_path):
    """On SQLite (Airflow's default) Airflow's connections wait 60 s for a writer instead of
    failing with "database is locked" after 5 s; a PostgreSQL connection gets no SQLite option."""
    import os
    import subprocess
    import sys

    from tasks.settings import airflow_environment

    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path / "home")})
    env = airflow_environment(settings, {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    probe = ("from airflow import settings\n"
             "with settings.engine.connect() as c: print(c.exec_driver_sql('PRAGMA busy_timeout').scalar())")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "60000"
    postgres = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow@127.0.0.1/airflow"}
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in airflow_environment(settings, postgres)
    home = tmp_path / "airflow-home"
    home.mkdir()
    (home / "airflow.cfg").write_text("[database]\nsql_alchemy_conn = postgresql://airflow@db/airflow\n")
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS" not in airflow_environment(settings, {"AIRFLOW_HOME": str(home)})


def test_the_command_leaves_without_teardown_yet_loses_nothing(tmp_path):
    """``tfpipe`` (tasks.cli:entry) skips the interpreter's teardown once TensorFlow is loaded:
    its output is complete, its exit code is the command's, and what the exit handlers do
    (MLflow, temporary folders) is done."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pipeline = write_pipeline(tmp_path, name="leaving")
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "run", str(pipeline), "--until", "validate_examples", "--run-id", "r1",
         "--set", "data.num_shards=1"],
        env={**os.environ, "TFPIPE_HOME": str(home)}, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validate_examples done" in done.stdout and done.stdout.rstrip().endswith(str(home / "model_store"))
    settings = Settings.from_env({"TFPIPE_HOME": str(home)})
    summary = MlflowTracking(settings.tracking_uri).pipeline_summary("leaving", "r1")
    assert summary["status"] == "FINISHED" and set(summary["durations"]) == {"ingest_examples", "validate_examples"}
    failed = subprocess.run(
        [sys.executable, "-m", "tasks.cli", "run", str(pipeline), "--run-id", "r2", "--set", "label=no_such_column"],
        env={**os.environ, "TFPIPE_HOME": str(home)}, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).parents[2])
    assert failed.returncode != 0 and "no_such_column" in failed.stderr
