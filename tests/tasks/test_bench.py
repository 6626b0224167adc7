"""The benchmark suites on small data: the GUIDE section 4 output contract and the same-work checks."""

import json

import pytest

from tasks.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Each benchmark logs an MLflow run: into a private home, never ~/.tfpipe."""
    monkeypatch.setenv("TFPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


def _check_contract(result, suite, variants):
    assert result["suite"] == suite
    assert result["machine"]["cpus"] >= 1 and "tensorflow" in result["machine"]["versions"]
    assert set(result["variants"]) == variants
    unit = "examples/s" if suite in ("input", "train", "batch", "graph") else "rows/s"
    for row in result["variants"].values():
        assert row["throughput"] > 0 and row["unit"] == unit and row["seconds"] > 0 and row["peak_rss_mb"] > 0
    for name, ratio in result["ratios"].items():
        a, b = name.split("/")
        assert abs(ratio - result["variants"][a]["throughput"] / result["variants"][b]["throughput"]) < 0.01 * ratio


def test_bench_ingest_contract(tmp_path, capsys):
    out = tmp_path / "ingest.json"
    assert main(["bench", "ingest", "--rows", "8000", "--repeat", "1", "--format", "csv", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "ingest", {"ours", "per_row_reference", "floor"})
    assert result["checks"]["same_examples_on_warmup"] is True
    assert result["stages"]["floor_is"] in ("read", "compress")
    assert "ours/per_row_reference" in capsys.readouterr().out


def test_bench_validate_contract(tmp_path):
    out = tmp_path / "validate.json"
    assert main(["bench", "validate", "--rows", "3000", "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "validate",
                    {"ours", "tfdv_default", "beam_all_cores", "in_memory", "tfdv_sampled_10pct", "floor"})
    checks = result["checks"]
    assert checks["ours_same_as_tfdv_default"] == "identical"
    assert checks["in_memory_same_as_tfdv_default"] == "identical"
    assert checks["tfdv_sampled_10pct_same_as_tfdv_default"] != "identical"  # sampling changes the statistics


def test_bench_input_contract(tmp_path):
    out = tmp_path / "input.json"
    assert main(["bench", "input", "--rows", "6000", "--repeat", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "input", {"ours", "ours_cached", "ours_untuned", "ours_untuned_cached", "naive", "floor"})
    examples = result["params"]["train_examples"]
    assert examples and set(result["checks"].values()) == {examples}  # every variant parsed the same examples
    assert set(result["targets"]) == {"ours/naive >= 5", "ours/floor >= 0.7", "ours_cached/floor >= 0.7"}


@pytest.mark.slow  # each trains several models: the slow suite
def test_bench_train_contract_and_mlflow_run(tmp_path, home):
    from mlflow import MlflowClient

    out = tmp_path / "train.json"
    assert main(["bench", "train", "--rows", "4000", "--repeat", "1", "--epochs", "1", "--batch-size", "128",
                 "--no-autotune", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    _check_contract(result, "train", {"ours", "ours_xla", "ours_bf16", "keras_fit", "workers_1", "workers_2"})
    assert result["params"]["autotune"] is False
    assert set(result["ratios"]) == {"ours/keras_fit", "ours_xla/ours", "ours_bf16/ours", "workers_2/workers_1"}
    assert result["checks"]["ours_xla_eval_loss_within_10pct_of_ours"]  # XLA learns what the plain step does
    assert result["checks"]["ours_bf16_eval_loss_within_10pct_of_ours"]  # so does bfloat16 compute
    assert set(result["final_eval_loss"]) == set(result["variants"])
    assert all(0 < loss < 1 for loss in result["final_eval_loss"].values())  # each variant learned (log loss)
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tfpipe-bench")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "bench-train" and run.info.status == "FINISHED"
    assert run.data.params["params.autotune"] == "False"
    assert run.data.metrics["ours.throughput"] == result["variants"]["ours"]["throughput"]
    assert run.data.metrics["ratio.workers_2_over_workers_1"] == result["ratios"]["workers_2/workers_1"]
    met = result["targets"]["ours/keras_fit >= 1"]
    assert run.data.tags["target.ours/keras_fit"] == f"{'met' if met else 'missed'} (>= 1)"


@pytest.mark.slow  # each trains several models: the slow suite
def test_bench_optimize_contract(tmp_path, capsys):
    out = tmp_path / "optimize.json"
    assert main(["bench", "optimize", "--rows", "3000", "--repeat", "1", "--batch-size", "256", "--out", str(out),
                 "--no-mlflow"]) == 0
    result = json.loads(out.read_text())
    built = {"saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_range", "tflite_int8", "qat_int8",
             "pruned"}
    assert built - set(result["rejected"]) <= set(result["variants"]) <= built | {"floor", "tensorrt_fp16"}
    _check_contract(result, "optimize", set(result["variants"]))
    assert result["checks"] == {"every_variant_answered_the_eval_examples": True}
    for name, row in result["variants"].items():
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"], name
        if name != "floor":
            assert row["gzip_bytes"] <= row["size_bytes"] and "accuracy" in row, name
    assert result["variants"]["tflite_int8"]["size_bytes"] < result["variants"]["tflite_float32"]["size_bytes"]
    assert set(result["ratios"]) == {f"{n}/saved_model" for n in result["variants"] if n != "saved_model"}
    printed = capsys.readouterr().out
    assert "tflite_int8/saved_model" in printed and "quality_drop" not in printed and "p50 ms" in printed


def test_bench_tfx_writes_the_tutorial_table_tfx_reads(tmp_path):
    import pandas as pd

    from tasks.bench.end_to_end import FEATURES, write_tfx_table

    rows = write_tfx_table(tmp_path / "data")
    frame = pd.read_csv(tmp_path / "data" / "penguins_processed.csv")
    assert rows == len(frame) == 342 and list(frame.columns) == ["species", *FEATURES]
    assert set(frame["species"]) == {0, 1, 2} and not frame.isna().any().any()
    assert frame[list(FEATURES)].min().min() == 0.0 and frame[list(FEATURES)].max().max() == 1.0


def test_bench_tfx_asks_for_a_python_tfx_supports(tmp_path, monkeypatch):
    import sys

    from tasks.bench.end_to_end import find_python
    from tasks.errors import UserError

    monkeypatch.setenv("PATH", str(tmp_path))  # no python3.10 or python3.9 on it
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.delenv("TFPIPE_TFX_PYTHON", raising=False)
    with pytest.raises(UserError, match="Python 3.10 or 3.9"):
        find_python(sys.executable)  # this interpreter is 3.11: refused


@pytest.mark.slow
def test_bench_tfx_times_tfpipe_from_a_fresh_home_and_checks_the_push(tmp_path):
    """The suite without TFX (its environment is big): tfpipe run, timed as a command, must push."""
    from tasks.bench.common import format_table
    from tasks.bench.end_to_end import bench_tfx

    result = bench_tfx(repeat=1, variants=("tfpipe_run",), workdir=tmp_path)
    row = result["variants"]["tfpipe_run"]
    assert result["suite"] == "tfx" and row["seconds"] > 0 and row["peak_rss_mb"] > 100
    assert result["params"]["tfx_rows"] == 342 and "tfpipe_run" in format_table(result)


def test_bench_tfx_reports_each_orchestration_against_tfx():
    from tasks.bench.common import format_table
    from tasks.bench.end_to_end import tfx_report

    times = {"tfx": [99.9, 98.6, 108.0], "tfpipe_run": [50.8, 54.1, 58.8], "airflow_dags_test": [76.0, 75.0, 82.2]}
    result = tfx_report(times, {name: 900.0 for name in times}, {"repeat": 3})
    assert result["variants"]["tfx"]["seconds"] == 99.9 and result["variants"]["tfpipe_run"]["unit"] == "runs/h"
    assert result["time_ratios"] == {"tfpipe_run/tfx": 0.542, "airflow_dags_test/tfx": 0.761}
    assert result["ratios"]["tfpipe_run/tfx"] == pytest.approx(99.9 / 54.1, rel=0.01)
    assert result["targets"] == {"tfpipe_run/tfx <= 0.5": False, "airflow_dags_test/tfx <= 0.75": False}
    assert "time_ratios" in format_table(result)


@pytest.mark.slow  # each trains several models: the slow suite
def test_bench_batch_reports_accuracy_per_batch_and_rule(tmp_path, home):
    out = tmp_path / "batch.json"
    assert main(["bench", "batch", "--rows", "3000", "--repeat", "1", "--epochs", "1", "--batch-size", "16",
                 "--no-mlflow", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {"batch_1x", "batch_4x", "batch_4x_linear", "batch_4x_sqrt", "batch_16x", "batch_16x_linear",
             "batch_16x_sqrt"}
    _check_contract(result, "batch", names)
    rates = result["learning_rate"]
    assert rates["batch_16x"] == rates["batch_1x"] == 0.003  # as set
    assert rates["batch_16x_linear"] == pytest.approx(0.048) and rates["batch_16x_sqrt"] == pytest.approx(0.012)
    assert set(result["eval_accuracy"]) == names and all(0.4 < a <= 1 for a in result["eval_accuracy"].values())


@pytest.mark.slow
def test_bench_graph_measures_each_pass_off_in_a_process_of_its_own(tmp_path, capsys):
    from tasks.bench.graph import DEFAULT_ON

    out = tmp_path / "graph.json"
    assert main(["bench", "graph", "--rows", "3000", "--repeat", "1", "--epochs", "1", "--batch-size", "128",
                 "--no-mlflow", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = {"defaults", "all_off", *(f"no_{name}" for name in DEFAULT_ON)}
    _check_contract(result, "graph", names)
    variants = result["variants"]
    for name, row in variants.items():
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["serving_rows_per_second"] > 0, name
        assert 0 < row["eval_loss"] < 1, name
    # Grappler ran as configured: with no pass at all the serving graph keeps every node it was traced with.
    assert variants["all_off"]["serving_nodes"] > variants["defaults"]["serving_nodes"]
    assert variants["no_arithmetic_optimization"]["serving_nodes"] > variants["defaults"]["serving_nodes"]
    assert set(result["checks"].values()) == {True}  # each graph answers as the defaults' does
    assert set(result["latency_ratios"]) == set(result["serving_throughput_ratios"]) == {
        f"{name}/defaults" for name in names - {"defaults"}}
    assert "no_remapping/defaults" in capsys.readouterr().out


def test_bench_gpu_reports_each_gpu_branch_or_why_it_was_skipped(tmp_path, home, capsys):
    import tensorflow as tf
    from mlflow import MlflowClient

    from tasks.bench.gpu import CHECKS

    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--rows", "3000", "--repeat", "1", "--epochs", "1", "--batch-size", "256",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["suite"] == "gpu"
    if tf.config.list_physical_devices("GPU"):  # a GPU machine: what ran, ran; the rest says why not
        assert "one_device" in result["variants"]
        assert set(result["variants"]) | set(result["skipped"]) >= set(CHECKS) - {"tensorrt_fp16"}
        assert set(result["checks"].values()) == {True}
    else:
        assert result["variants"] == {} and set(result["skipped"]) == set(CHECKS)
        assert all("no GPU visible to TensorFlow" in reason for reason in result["skipped"].values())
        assert "tensorflow[and-cuda]==2.16" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tfpipe-bench").experiment_id])
    assert run.info.run_name == "bench-gpu" and run.info.status == "FINISHED"
