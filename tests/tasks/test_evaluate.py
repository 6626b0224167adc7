"""evaluate_model: metrics, slices, the trivial baseline, the gate and its blessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.config import GateConfig, MetricGate, load_pipeline
from tasks.evaluate import evaluate_model, gate_checks, read_blessing
from tasks.release.model_store import champion
from tasks.release.push import push_model
from tests.helpers import write_pipeline


def _evaluate(trained, gate, champion_ref, name):
    return evaluate_model(trained["model"].uri, trained["examples"].uri, gate, champion_ref,
                          str(trained["root"] / name), trained["cache"], trained["work"])



def test_cold_start_blessing_uses_absolute_threshold_only(trained):
    gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.5, max_decrease=0.0)})
    blessing = _evaluate(trained, gate, None, "eval_cold")
    assert blessing.blessed
    assert blessing.baseline is None
    assert [c.kind for c in blessing.checks] == ["lower_bound", "max_decrease"]
    assert blessing.checks[1].passed is None
    assert "skipped" in blessing.reasons[1]
    assert (trained["root"] / "eval_cold" / "BLESSED").is_file()
    assert read_blessing(blessing.uri).blessed is True



def test_unreachable_threshold_is_not_blessed(trained):
    gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=1.01)})
    blessing = _evaluate(trained, gate, None, "eval_strict")
    assert not blessing.blessed
    assert "FAILED" in blessing.reasons[0]
    assert (trained["root"] / "eval_strict" / "NOT_BLESSED").is_file()



def test_regression_against_champion_is_blocked():
    gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.5, max_decrease=0.01),
                               "log_loss": MetricGate(max_increase=0.1)})
    checks = gate_checks(gate, {"accuracy": 0.90, "log_loss": 0.3}, {"accuracy": 0.95, "log_loss": 0.1})
    verdicts = {(c.metric, c.kind): c.passed for c in checks}
    assert verdicts == {("accuracy", "lower_bound"): True, ("accuracy", "max_decrease"): False,
                        ("log_loss", "max_increase"): False}



def test_slices_are_measured_and_gated_per_value(trained):
    from tasks.config import SliceGate
    from tasks.evaluate import format_checks

    gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.5)}, slices=[
        SliceGate(feature="island", metrics={"accuracy": MetricGate(lower_bound=0.5)}, min_examples=5),
        SliceGate(feature="year")])  # measured, not gated
    blessing = _evaluate(trained, gate, None, "eval_slices")
    islands = {k: v for k, v in blessing.slice_metrics.items() if k.startswith("island=")}
    assert set(islands) == {"island=Biscoe", "island=Dream", "island=Torgersen"}
    total = blessing.metrics["example_count"]
    assert sum(v["example_count"] for v in islands.values()) == total
    assert sum(v["example_count"] for k, v in blessing.slice_metrics.items() if k.startswith("year=")) == total
    # The overall accuracy is the example-weighted mean of the slices'.
    weighted = sum(v["accuracy"] * v["example_count"] for v in islands.values()) / total
    assert weighted == pytest.approx(blessing.metrics["accuracy"])
    sliced = [c for c in blessing.checks if c.slice]
    assert {c.slice for c in sliced} == set(islands) and blessing.blessed
    table = format_checks(blessing)
    assert "island=Dream" in table and "champion" in table.splitlines()[2] and "slices:" in table
    assert table.splitlines()[1].startswith("trivial baseline (predicting the train split's majority class")
    assert (Path(blessing.uri) / "plots" / "slices.png").read_bytes().startswith(b"\x89PNG")



def test_a_failing_slice_blocks_the_blessing_and_a_small_one_is_not_gated(trained):
    from tasks.config import SliceGate

    strict = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)},
                        slices=[SliceGate(feature="island", metrics={"accuracy": MetricGate(lower_bound=1.01)},
                                          min_examples=1)])
    blessing = _evaluate(trained, strict, None, "eval_slice_fails")
    assert not blessing.blessed
    assert all(c.passed is False for c in blessing.checks if c.slice)
    assert any(r.startswith("[island=Dream] accuracy") and r.endswith("FAILED") for r in blessing.reasons)
    small = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)},
                       slices=[SliceGate(feature="island", metrics={"accuracy": MetricGate(lower_bound=1.01)},
                                         min_examples=10_000)])
    blessing = _evaluate(trained, small, None, "eval_slice_small")
    assert blessing.blessed
    assert {c.kind for c in blessing.checks if c.slice} == {"min_examples"}
    assert "fewer than 10000" in blessing.reasons[-1]



def test_slicing_by_a_float_or_unknown_column_is_refused(trained):
    from tasks.config import SliceGate

    for column, message in (("bill_length_mm", "holds floats"), ("colour", "not a column")):
        gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}, slices=[SliceGate(feature=column)])
        with pytest.raises(ValueError, match=message):
            _evaluate(trained, gate, None, f"eval_bad_{column}")



def test_slice_change_bounds_compare_with_the_champion_on_the_same_slice():
    from tasks.config import SliceGate

    gate = GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)},
                      slices=[SliceGate(feature="g", metrics={"accuracy": MetricGate(max_decrease=0.05),
                                                              "auc": MetricGate(lower_bound=0.5)}, min_examples=2)])
    mine = {"g=a": {"example_count": 10, "accuracy": 0.80, "auc": 0.9}, "g=b": {"example_count": 10, "accuracy": 0.9}}
    champion = {"g=a": {"example_count": 10, "accuracy": 0.90, "auc": 0.9}, "g=b": {"example_count": 10, "accuracy": 0.9}}
    checks = {(c.slice, c.metric, c.kind): c for c in gate_checks(gate, {"accuracy": 0.85}, {"accuracy": 0.9},
                                                                    mine, champion)}
    assert checks[("g=a", "accuracy", "max_decrease")].passed is False  # 0.80 < 0.90 - 0.05
    assert checks[("g=b", "accuracy", "max_decrease")].passed is True
    assert checks[("g=b", "auc", "lower_bound")].passed is None  # one class in the slice: no AUC
    assert "not defined on this slice" in checks[("g=b", "auc", "lower_bound")].describe()
    cold = gate_checks(gate, {"accuracy": 0.85}, None, mine, None)
    assert [c.passed for c in cold if c.kind == "max_decrease"] == [None, None]



def test_a_gate_metric_the_task_has_not_is_a_config_error_and_an_undefined_one_is_skipped(tmp_path):
    from tasks.config import ConfigError

    with pytest.raises(ConfigError, match=r"gate.metrics.accuracy: task regression has no metric 'accuracy' "
                                          r"\(its metrics: rmse, mae, r2\)"):
        load_pipeline(write_pipeline(tmp_path, task="regression", label="body_mass_g"))
    # AUC of an eval split holding one class: not an error, a skipped check that says why
    (check,) = gate_checks(GateConfig(metrics={"auc": MetricGate(lower_bound=0.5)}), {"accuracy": 1.0}, None)
    assert check.passed is None and "auc is not defined on the eval split" in check.describe()



def test_champion_is_evaluated_on_the_same_examples(trained, tmp_path):
    store = str(tmp_path / "store")
    blessing = _evaluate(trained, GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}), None, "eval_a")
    push_model(Path(trained["model"].saved_model_uri), blessing, store, "tiny", owner="t")
    with_champion = _evaluate(trained, GateConfig(metrics={"accuracy": MetricGate(max_decrease=0.0)}),
                              champion(store, "tiny"), "eval_b")
    assert with_champion.baseline["version"] == 1
    assert with_champion.baseline["metrics"]["accuracy"] == pytest.approx(with_champion.metrics["accuracy"])
    assert with_champion.blessed
    for name in ("confusion_matrix.png", "roc_pr_curves.png"):  # challenger and champion side by side
        png = (Path(with_champion.uri) / "plots" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000



def test_classification_metrics_binary_by_hand():
    from tasks.evaluate import compute_metrics

    # Positive class "yes"; scores of "yes": 0.9 0.8 0.3 0.6 0.2 -> predicted yes yes no yes no.
    positive = np.array([0.9, 0.8, 0.3, 0.6, 0.2])
    outputs = {"scores": np.stack([1 - positive, positive], axis=1),
               "classes": np.array([["no", "yes"]] * 5, dtype=object),
               "predicted_class": np.array(["yes", "yes", "no", "yes", "no"], dtype=object)}
    labels = np.array(["yes", "no", "yes", "yes", "no"])
    metrics = compute_metrics("binary", outputs, labels)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)  # yes predicted 3 times, right twice
    assert metrics["recall"] == pytest.approx(2 / 3)  # 3 yes, 2 found
    # Pairs (positive, negative) ranked right: (0.9>0.8) (0.9>0.2) (0.3<0.8) (0.3>0.2) (0.6<0.8) (0.6>0.2)
    assert metrics["auc"] == pytest.approx(4 / 6)



def test_classification_metrics_multiclass_macro_and_single_class_eval():
    from tasks.evaluate import compute_metrics

    classes = np.array([["a", "b", "c"]] * 4, dtype=object)
    scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    outputs = {"scores": scores, "classes": classes,
               "predicted_class": np.array(["a", "b", "c", "a"], dtype=object)}
    metrics = compute_metrics("multiclass", outputs, np.array(["a", "b", "c", "b"]))
    # Precision a 1/2, b 1, c 1 -> 5/6; recall a 1, b 1/2, c 1 -> 5/6.
    assert metrics["precision"] == pytest.approx(5 / 6) and metrics["recall"] == pytest.approx(5 / 6)
    # One-vs-rest: a 1.0; b: positives 0.7, 0.3 vs negatives 0.1, 0.2 -> 1.0; c 1.0.
    assert metrics["auc"] == pytest.approx(1.0)
    single = compute_metrics("multiclass", outputs, np.array(["a", "a", "a", "a"]))
    assert "auc" not in single and single["recall"] == pytest.approx(1 / 6)  # a: 2/4, b and c: 0



def test_regression_evaluation_plots_residuals(tmp_path):
    from tasks.plots import evaluation_plots

    labels = np.linspace(0, 10, 50)
    models = {"challenger": {"predictions": labels + 0.1}, "champion v1": {"predictions": labels - 0.5}}
    (path,) = evaluation_plots("regression", models, labels, tmp_path)
    assert path.name == "residuals.png" and path.read_bytes().startswith(b"\x89PNG")



def test_the_default_gate_fits_the_task_and_asks_to_beat_the_trivial_baseline(tmp_path):
    from tasks.config import default_gate_metrics

    for task, label in (("binary", "sex"), ("multiclass", "species"), ("regression", "body_mass_g")):
        config = load_pipeline(write_pipeline(tmp_path, name=task, task=task, label=label, gate=None))
        assert config.gate.metrics == default_gate_metrics(task)
        assert all(bounds.beat_baseline_by and bounds.max_decrease for bounds in config.gate.metrics.values())
    assert set(default_gate_metrics("regression")) == {"r2"}  # unitless: no label-unit bound by default



def test_a_model_below_the_majority_class_rate_is_not_blessed():
    gate = GateConfig(metrics=default_gate_metrics_for("binary"))
    trivial = {"metrics": {"accuracy": 0.637, "auc": 0.5}}
    checks = gate_checks(gate, {"accuracy": 0.584, "auc": 0.71}, None, trivial=trivial)
    by_metric = {(c.metric, c.kind): c for c in checks}
    assert by_metric[("accuracy", "beat_baseline_by")].passed is False
    assert by_metric[("accuracy", "beat_baseline_by")].bound == pytest.approx(0.647)
    assert "trivial baseline 0.6370 + 0.0100: FAILED" in by_metric[("accuracy", "beat_baseline_by")].describe()
    assert by_metric[("auc", "beat_baseline_by")].passed is True
    assert gate_checks(gate, {"accuracy": 0.70, "auc": 0.71}, None, trivial=trivial)[0].passed is True
    # lower is better: log loss must fall below the baseline's
    (loss,) = gate_checks(GateConfig(metrics={"log_loss": MetricGate(beat_baseline_by=0.05)}), {"log_loss": 0.62},
                          None, trivial={"metrics": {"log_loss": 0.66}})
    assert loss.passed is False and loss.bound == pytest.approx(0.61)



def default_gate_metrics_for(task):
    from tasks.config import default_gate_metrics

    return default_gate_metrics(task)



def test_evaluation_measures_the_trivial_baseline_on_the_same_examples(trained):
    from tasks.evaluate import format_checks

    blessing = _evaluate(trained, GateConfig(metrics=default_gate_metrics_for("multiclass")), None, "eval_trivial")
    trivial = blessing.trivial
    counts = trained["examples"]
    labels = read_blessing(blessing.uri)
    assert trivial["metrics"]["example_count"] == blessing.metrics["example_count"] == counts.counts["eval"]
    assert "majority class 'Adelie'" in trivial["description"]
    assert 0.3 < trivial["metrics"]["accuracy"] < 0.55 and trivial["metrics"]["auc"] == pytest.approx(0.5)
    check = next(c for c in blessing.checks if c.kind == "beat_baseline_by")
    assert check.trivial == trivial["metrics"]["accuracy"] and check.passed and blessing.blessed
    assert labels.trivial["metrics"] == trivial["metrics"]
    table = format_checks(blessing)
    assert "beat_baseline_by" in table and f"{trivial['metrics']['accuracy']:.4f}" in table



def test_regression_gets_r2_and_its_trivial_baseline_is_the_train_mean():
    from tasks.evaluate import compute_metrics, trivial_outputs
    from tasks.training.model import ModelSpec

    labels = np.array([1.0, 2.0, 3.0, 4.0])
    metrics = compute_metrics("regression", {"predictions": np.array([1.1, 1.9, 3.2, 3.8])}, labels)
    assert metrics["r2"] == pytest.approx(1 - 0.1 / 5.0)
    spec = ModelSpec(task="regression", label="y", label_kind="float", label_vocabulary=(), features=(),
                     hidden_units=(8,), embedding_dim=2)
    stats = {"classes": [], "splits": {"train": {"count": 10, "mean": 2.0, "std": 1.0}}}
    outputs, description = trivial_outputs(spec, stats, len(labels))
    assert description == "predicting the train split's mean, 2" and (outputs["predictions"] == 2.0).all()
    trivial = compute_metrics("regression", outputs, labels)
    assert trivial["r2"] == pytest.approx(1 - 6.0 / 5.0)  # the train mean is off the eval mean: below 0
