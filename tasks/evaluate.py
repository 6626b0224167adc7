"""evaluate_model: metrics on the eval split and a blessing with its reasons.

The candidate is evaluated through its exported ``serving_default`` signature, i.e. exactly
as TensorFlow Serving will run it. The champion (the version the model store serves) is
evaluated on the same examples. Absolute bounds always apply; change bounds apply only when
there is a champion. With no champion (cold start) they are recorded as skipped, as in TFX.

Slices (``gate.slices``): the eval split is cut by the values of a column (``island=Dream``);
every slice gets the same metrics, and where the config gives bounds, every slice with at
least ``min_examples`` examples must meet them (change bounds against the champion on the same
slice). A metric a slice cannot have (AUC of a slice holding one class) is a skipped check.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.config import HIGHER_IS_BETTER, GateConfig, MetricGate
from tasks.training.model import ModelSpec
from tasks.plots import evaluation_plots, slice_plot
from tasks.artifacts import (BLESSING_FILE, METRICS_FILE, PLOTS_DIR, SAVED_MODEL_DIR, SERVING_SIGNATURE, Blessing,
                             Check, Examples)
from tasks.training.export import read_model_spec

_EPSILON = 1e-7
OVERALL = "(overall)"
MISSING = "<missing>"


def eval_data(examples: Examples | str, spec: ModelSpec, cache_dir: Path) -> tuple[list[bytes], np.ndarray]:
    """Serialized eval examples and their raw labels (``examples``: the artifact or its URI)."""
    import tensorflow as tf

    examples = Examples.open(examples) if isinstance(examples, str) else examples
    records = [r.numpy() for r in tf.data.TFRecordDataset(examples.files("eval", cache_dir), compression_type="GZIP")]
    dtype = {"string": tf.string, "int": tf.int64, "float": tf.float32}[spec.label_kind]
    labels = tf.io.parse_example(records, {spec.label: tf.io.FixedLenFeature([1], dtype)})[spec.label].numpy()[:, 0]
    if spec.label_kind == "string":
        labels = labels.astype(str)
    return records, labels


def predict(saved_model_dir: Path, records: list[bytes], batch_size: int = 1024,
            reuse: bool = False) -> dict[str, np.ndarray]:
    """Run the ``serving_default`` signature over serialized examples. ``reuse``: a load of the
    same files earlier in this process may serve (evaluate's challenger, which optimize loads
    again); checks of what is on disk (the push's) always load it."""
    import tensorflow as tf

    from tasks.training.export import load_saved_model

    loaded = load_saved_model(saved_model_dir) if reuse else tf.saved_model.load(str(saved_model_dir))
    serve = loaded.signatures[SERVING_SIGNATURE]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(records), batch_size):
        for key, value in serve(examples=tf.constant(records[start:start + batch_size])).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def compute_metrics(task: str, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """example_count, and for classifiers accuracy, log_loss, auc, precision and recall (binary:
    of the second class, the positive one; multiclass: macro averages, AUC one-vs-rest), for
    regressors rmse, mae and r2 (left out when every label is the same). AUC is left out when the eval split holds a single class. Macro
    averages are over the classes that occur in the labels or the predictions."""
    metrics: dict[str, float] = {"example_count": float(len(labels))}
    if task == "regression":
        error = outputs["predictions"].astype(np.float64) - labels.astype(np.float64)
        metrics["rmse"] = float(np.sqrt(np.mean(error**2)))
        metrics["mae"] = float(np.mean(np.abs(error)))
        spread = float(np.sum((labels.astype(np.float64) - labels.astype(np.float64).mean()) ** 2))
        if spread > 0:  # the share of the eval labels' variance explained (sklearn's r2_score)
            metrics["r2"] = 1.0 - float(np.sum(error**2)) / spread
        return metrics
    classes = outputs["classes"].astype(str)
    labels = labels.astype(str) if labels.dtype.kind in "OSU" else labels.astype(np.int64).astype(str)
    predicted = outputs["predicted_class"].astype(str)
    metrics["accuracy"] = float(np.mean(predicted == labels))
    match = classes == labels[:, None]
    true_score = np.where(match.any(axis=1), (outputs["scores"] * match).sum(axis=1), 0.0)
    metrics["log_loss"] = float(-np.mean(np.log(np.clip(true_score, _EPSILON, 1.0))))
    metrics.update(_ranking_metrics(task, classes[0], outputs["scores"], labels, predicted))
    return metrics


def _ranking_metrics(task: str, classes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                     predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    classes = [str(c) for c in classes]
    metrics: dict[str, float] = {}
    if task == "binary":
        positive = classes[1]
        kwargs = {"pos_label": positive, "average": "binary"}
        if len(set(labels.tolist())) == 2:
            metrics["auc"] = float(roc_auc_score(labels == positive, scores[:, 1]))
    else:
        # Macro over the classes in the labels or the predictions: a class absent from both (as
        # in a slice) would count as a 0 and drag the mean down for no error made.
        kwargs = {"average": "macro"}
        present = set(labels.tolist())
        if len(present) > 1:
            # One-vs-rest over the classes present in the eval split, scores renormalized to them.
            keep = [i for i, c in enumerate(classes) if c in present]
            kept = scores[:, keep] / np.clip(scores[:, keep].sum(axis=1, keepdims=True), _EPSILON, None)
            names = [classes[i] for i in keep]
            metrics["auc"] = float(roc_auc_score(labels, kept[:, 1] if len(names) == 2 else kept,
                                                 multi_class="ovr", labels=names))
    metrics["precision"] = float(precision_score(labels, predicted, zero_division=0, **kwargs))
    metrics["recall"] = float(recall_score(labels, predicted, zero_division=0, **kwargs))
    return metrics


def _bound_checks(bounds_by_metric: dict[str, MetricGate], metrics: dict[str, float],
                  baseline: dict[str, float] | None, slice_name: str | None = None,
                  trivial: dict[str, float] | None = None) -> list[Check]:
    checks = []
    for metric, bounds in bounds_by_metric.items():
        reference = (trivial or {}).get(metric)
        if metric not in metrics:
            note = f"{metric} is not defined on {'this slice' if slice_name else 'the eval split'} (one class?)"
            checks += [Check(metric, kind, None, None, None, None, slice_name, note, reference)
                       for kind in ("lower_bound", "upper_bound", "beat_baseline_by", "max_decrease", "max_increase")
                       if getattr(bounds, kind) is not None]
            continue
        value = metrics[metric]
        if bounds.lower_bound is not None:
            checks.append(Check(metric, "lower_bound", value, bounds.lower_bound, None, value >= bounds.lower_bound,
                                slice_name, trivial=reference))
        if bounds.upper_bound is not None:
            checks.append(Check(metric, "upper_bound", value, bounds.upper_bound, None, value <= bounds.upper_bound,
                                slice_name, trivial=reference))
        if bounds.beat_baseline_by is not None:
            checks.append(_baseline_check(metric, value, bounds.beat_baseline_by, reference, slice_name))
        for kind, allowed, sign in (("max_decrease", bounds.max_decrease, -1), ("max_increase", bounds.max_increase, 1)):
            if allowed is None:
                continue
            if baseline is None or metric not in baseline:
                note = "no champion to compare with" if baseline is None else f"the champion has no {metric} here"
                checks.append(Check(metric, kind, value, None, None, None, slice_name, note, reference))
                continue
            bound = baseline[metric] + sign * allowed
            passed = value >= bound - 1e-12 if sign < 0 else value <= bound + 1e-12
            checks.append(Check(metric, kind, value, bound, baseline[metric], passed, slice_name, trivial=reference))
    return checks


def _baseline_check(metric: str, value: float, margin: float, reference: float | None,
                    slice_name: str | None) -> Check:
    """The metric beats the trivial baseline's by ``margin``, in its better direction."""
    if reference is None:
        return Check(metric, "beat_baseline_by", value, None, None, None, slice_name,
                     "no trivial baseline for these examples (ingested before label statistics were recorded)")
    higher = metric in HIGHER_IS_BETTER
    bound = reference + margin if higher else reference - margin
    passed = value >= bound - 1e-12 if higher else value <= bound + 1e-12
    return Check(metric, "beat_baseline_by", value, bound, None, passed, slice_name, trivial=reference)


def gate_checks(gate: GateConfig, metrics: dict[str, float], baseline: dict[str, float] | None,
                slice_metrics: dict[str, dict[str, float]] | None = None,
                baseline_slices: dict[str, dict[str, float]] | None = None,
                trivial: dict[str, Any] | None = None) -> list[Check]:
    """Every check of the gate: overall, then per slice of each gated column.

    Args:
        slice_metrics: ``{"column=value": metrics}`` of the candidate (with ``example_count``).
        baseline_slices: The champion's, on the same slices; None on a cold start.
        trivial: The trivial baseline's ``metrics`` and ``slice_metrics`` (:func:`trivial_outputs`).
    """
    trivial = trivial or {}
    checks = _bound_checks(gate.metrics, metrics, baseline, trivial=trivial.get("metrics"))
    for item in gate.slices:
        if not item.metrics:
            continue
        for name, values in sorted((slice_metrics or {}).items()):
            if name.partition("=")[0] != item.feature:
                continue
            count = int(values.get("example_count", 0))
            if count < item.min_examples:
                checks += [Check(metric, "min_examples", float(count), float(item.min_examples), None, None, name,
                                 f"{count} examples, fewer than {item.min_examples}")
                           for metric in item.metrics]
                continue
            champion = None if baseline_slices is None else baseline_slices.get(name, {})
            checks += _bound_checks(item.metrics, values, champion, name,
                                    (trivial.get("slice_metrics") or {}).get(name))
    return checks


def slice_values(records: list[bytes], kinds: dict[str, str], column: str) -> np.ndarray:
    """The value of ``column`` in each serialized example, as text (``<missing>`` when absent).

    Raises:
        ValueError: The column is not in the examples, or holds floats (no finite set of slices).
    """
    import tensorflow as tf

    if column not in kinds:
        raise ValueError(f"gate.slices: {column!r} is not a column of the examples (columns: {sorted(kinds)})")
    if kinds[column] == "float":
        raise ValueError(f"gate.slices: {column!r} holds floats; slice on a string or integer column")
    dtype = tf.string if kinds[column] == "string" else tf.int64
    ragged = tf.io.parse_example(records, {column: tf.io.RaggedFeature(dtype)})[column]
    values = []
    for row in ragged.to_list():
        if not row:
            values.append(MISSING)
        else:
            values.append(row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else str(row[0]))
    return np.array(values, dtype=object)


def compute_slice_metrics(task: str, outputs: dict[str, np.ndarray], labels: np.ndarray,
                          slices: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{"column=value": metrics}`` for every value of every slicing column."""
    found = {}
    for column, values in slices.items():
        for value in sorted(set(values.tolist())):
            mask = values == value
            found[f"{column}={value}"] = compute_metrics(task, {k: v[mask] for k, v in outputs.items()}, labels[mask])
    return found


def trivial_outputs(spec: ModelSpec, label_stats: dict[str, Any] | None,
                    rows: int) -> tuple[dict[str, np.ndarray], str] | None:
    """What a model that ignores the features answers, from the train split's label statistics:
    the majority class, with the class shares as scores (AUC 0.5), or the mean. With its
    description; None when the examples carry no label statistics."""
    train = ((label_stats or {}).get("splits") or {}).get("train")
    if not train or not train.get("count"):
        return None
    if spec.task == "regression":
        mean = float(train["mean"])
        return {"predictions": np.full(rows, mean)}, f"predicting the train split's mean, {mean:.6g}"
    counts = dict(zip(label_stats["classes"], train["class_counts"]))
    vocabulary = [str(c) for c in (spec.label_vocabulary or ("0", "1"))]
    shares = np.array([counts.get(c, 0) for c in vocabulary], dtype=np.float64) / float(train["count"])
    majority = vocabulary[int(np.argmax(shares))]
    outputs = {"classes": np.tile(np.array(vocabulary, dtype=object), (rows, 1)),
               "scores": np.tile(shares, (rows, 1)), "predicted_class": np.full(rows, majority, dtype=object)}
    return outputs, (f"predicting the train split's majority class {majority!r} ({shares.max():.1%} of train), "
                     f"with its class shares as scores")


def _trivial(spec: ModelSpec, label_stats: dict[str, Any] | None, labels: np.ndarray,
             slices: dict[str, np.ndarray]) -> tuple[dict[str, Any] | None, dict[str, np.ndarray] | None]:
    """The trivial baseline's record (description, metrics, slice metrics) and outputs."""
    found = trivial_outputs(spec, label_stats, len(labels))
    if found is None:
        return None, None
    outputs, description = found
    return {"description": description, "metrics": compute_metrics(spec.task, outputs, labels),
            "slice_metrics": compute_slice_metrics(spec.task, outputs, labels, slices)}, outputs


def evaluate_model(
    model_uri: str,
    examples_uri: str,
    config: GateConfig,
    champion: tuple[int, str] | None,
    output_uri: str,
    cache_dir: Path,
    work_dir: Path,
    champion_generation: int | None = None,
) -> Blessing:
    """Evaluate the candidate (and the champion), apply the gate (``config``: the ``gate`` section), publish
    the blessing.

    Args:
        champion: ``(version, uri)`` of the model now served, or None on a cold start.
        champion_generation: The champion pointer's generation (``tasks.release.model_store``), recorded
            in the blessing so that the push can tell whether the champion changed meanwhile.

    The published folder also holds ``plots/``: confusion matrix and ROC/PR curves (or
    residuals), challenger and champion side by side.
    """
    spec = read_model_spec(model_uri)
    examples = Examples.open(examples_uri)
    records, labels = eval_data(examples, spec, cache_dir)
    slices = {item.feature: slice_values(records, examples.columns, item.feature) for item in config.slices}
    local_model = storage.materialize(model_uri, cache_dir)
    outputs = {"challenger": predict(local_model / SAVED_MODEL_DIR, records, reuse=True)}
    metrics = compute_metrics(spec.task, outputs["challenger"], labels)
    slice_metrics = compute_slice_metrics(spec.task, outputs["challenger"], labels, slices)
    baseline = None
    if champion is not None:
        version, uri = champion
        champion_dir = storage.materialize(uri, cache_dir)
        outputs[f"champion v{version}"] = predict(champion_dir, records)
        baseline = {
            "version": version,
            "uri": uri,
            "metrics": compute_metrics(spec.task, outputs[f"champion v{version}"], labels),
            "slice_metrics": compute_slice_metrics(spec.task, outputs[f"champion v{version}"], labels, slices),
        }
    trivial, _ = _trivial(spec, examples.label_stats, labels, slices)
    checks = tuple(gate_checks(config, metrics, baseline["metrics"] if baseline else None, slice_metrics,
                               baseline["slice_metrics"] if baseline else None, trivial))
    blessed = all(c.passed is not False for c in checks)
    against = {"version": champion[0], "generation": champion_generation} if champion is not None else None
    blessing = Blessing(output_uri, model_uri, blessed, metrics, baseline, checks, slice_metrics, trivial, against)

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="evaluate-"))
    try:
        (scratch / METRICS_FILE).write_text(json.dumps({"candidate": metrics, "baseline": baseline,
                                                        "trivial": trivial}, indent=2))
        (scratch / BLESSING_FILE).write_text(json.dumps(blessing.to_dict(), indent=2))
        # TFX's marker files, so a glance at the directory tells the verdict.
        (scratch / ("BLESSED" if blessed else "NOT_BLESSED")).write_bytes(b"")
        evaluation_plots(spec.task, outputs, labels, scratch / PLOTS_DIR)
        if slice_metrics:
            slice_plot(slice_metrics, baseline["slice_metrics"] if baseline else None,
                       "rmse" if spec.task == "regression" else "accuracy", scratch / PLOTS_DIR / "slices.png")
        storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return blessing


def read_blessing(evaluation_uri: str) -> Blessing:
    """The published blessing (what the push re-checks)."""
    return Blessing.read(evaluation_uri)


def format_checks(blessing: Blessing) -> str:
    """The blessing as a table: one row per check (with the trivial baseline's and the champion's
    value of the metric), then the metrics of every slice."""
    from tasks.tables import format_table

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = []
    for check in blessing.checks:
        result = {True: "passed", False: "FAILED", None: f"skipped: {check.note or 'no champion'}"}[check.passed]
        rows.append((check.metric, check.slice or OVERALL, check.kind, number(check.value), number(check.bound),
                     number(check.trivial), number(check.baseline), result))
    lines = [f"blessing: {'BLESSED' if blessing.blessed else 'NOT BLESSED'}"]
    trivial = blessing.trivial
    if trivial:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(trivial["metrics"].items()) if k != "example_count")
        lines.append(f"trivial baseline ({trivial['description']}): {shown}")
    lines += format_table(("metric", "slice", "check", "value", "bound", "baseline", "champion", "result"), rows,
                          indent=2).splitlines()
    slices = blessing.slice_metrics
    if slices:
        names = sorted({k for values in slices.values() for k in values if k != "example_count"})
        table = [(name, str(int(values["example_count"])), *(number(values.get(n)) for n in names))
                 for name, values in slices.items()]
        lines += ["", "slices:"] + format_table(("slice", "examples", *names), table, indent=2,
                                                right=range(1, 2 + len(names))).splitlines()
    return "\n".join(lines)
