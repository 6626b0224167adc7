"""evaluate_model: metrics on the eval split and a blessing with its reasons.

The candidate is evaluated through its exported ``serving_default`` signature, i.e. exactly
as TensorFlow Serving will run it. The champion (the latest version in the model store) is
evaluated on the same examples. Absolute bounds always apply; change bounds apply only when
there is a champion. With no champion (cold start) they are recorded as skipped, as in TFX.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.config import GateConfig
from tasks.ingest import read_manifest, split_files
from tasks.model import ModelSpec
from tasks.plots import evaluation_plots
from tasks.train import SAVED_MODEL_DIR, SERVING_SIGNATURE, read_model_spec

BLESSING_FILE = "blessing.json"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
_EPSILON = 1e-7


@dataclass(frozen=True)
class Check:
    metric: str
    kind: str  # lower_bound, upper_bound, max_decrease, max_increase
    value: float
    bound: float | None
    baseline: float | None
    passed: bool | None  # None: skipped

    def describe(self) -> str:
        if self.passed is None:
            return f"{self.metric} {self.kind}: skipped (no champion to compare with)"
        verdict = "passed" if self.passed else "FAILED"
        if self.kind in ("lower_bound", "upper_bound"):
            op = ">=" if self.kind == "lower_bound" else "<="
            return f"{self.metric} = {self.value:.4f} {op} {self.bound:.4f}: {verdict}"
        op = ">=" if self.kind == "max_decrease" else "<="
        return f"{self.metric} = {self.value:.4f} {op} champion {self.baseline:.4f} {'-' if self.kind == 'max_decrease' else '+'} {abs(self.bound - self.baseline):.4f}: {verdict}"


@dataclass(frozen=True)
class Blessing:
    """The gate's verdict; ``to_dict`` is what moves through XCom."""

    uri: str
    model_uri: str
    blessed: bool
    metrics: dict[str, float]
    baseline: dict[str, Any] | None
    checks: tuple[Check, ...]

    @property
    def reasons(self) -> list[str]:
        return [c.describe() for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = self.reasons
        return data


def eval_data(examples_uri: str, spec: ModelSpec, cache_dir: Path) -> tuple[list[bytes], np.ndarray]:
    """Serialized eval examples and their raw labels."""
    import tensorflow as tf

    manifest = read_manifest(examples_uri)
    local = storage.materialize(examples_uri, cache_dir)
    records = [r.numpy() for r in tf.data.TFRecordDataset(split_files(local, manifest, "eval"), compression_type="GZIP")]
    dtype = {"string": tf.string, "int": tf.int64, "float": tf.float32}[spec.label_kind]
    labels = tf.io.parse_example(records, {spec.label: tf.io.FixedLenFeature([1], dtype)})[spec.label].numpy()[:, 0]
    if spec.label_kind == "string":
        labels = labels.astype(str)
    return records, labels


def predict(saved_model_dir: Path, records: list[bytes], batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Run the ``serving_default`` signature over serialized examples."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(saved_model_dir)).signatures[SERVING_SIGNATURE]
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(records), batch_size):
        for key, value in serve(examples=tf.constant(records[start:start + batch_size])).items():
            parts.setdefault(key, []).append(value.numpy())
    return {key: np.concatenate(values) for key, values in parts.items()}


def compute_metrics(task: str, outputs: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """example_count, and for classifiers accuracy, log_loss, auc, precision and recall (binary:
    of the second class, the positive one; multiclass: macro averages, AUC one-vs-rest), for
    regressors rmse and mae. AUC is left out when the eval split holds a single class."""
    metrics: dict[str, float] = {"example_count": float(len(labels))}
    if task == "regression":
        error = outputs["predictions"].astype(np.float64) - labels.astype(np.float64)
        metrics["rmse"] = float(np.sqrt(np.mean(error**2)))
        metrics["mae"] = float(np.mean(np.abs(error)))
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
        kwargs = {"labels": classes, "average": "macro"}
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


def gate_checks(gate: GateConfig, metrics: dict[str, float], baseline: dict[str, float] | None) -> list[Check]:
    checks = []
    for metric, bounds in gate.metrics.items():
        if metric not in metrics:
            raise ValueError(f"gate.metrics.{metric}: the model has no metric {metric!r} (it has {sorted(metrics)})")
        value = metrics[metric]
        if bounds.lower_bound is not None:
            checks.append(Check(metric, "lower_bound", value, bounds.lower_bound, None, value >= bounds.lower_bound))
        if bounds.upper_bound is not None:
            checks.append(Check(metric, "upper_bound", value, bounds.upper_bound, None, value <= bounds.upper_bound))
        for kind, allowed, sign in (("max_decrease", bounds.max_decrease, -1), ("max_increase", bounds.max_increase, 1)):
            if allowed is None:
                continue
            if baseline is None or metric not in baseline:
                checks.append(Check(metric, kind, value, None, None, None))
                continue
            bound = baseline[metric] + sign * allowed
            passed = value >= bound - 1e-12 if sign < 0 else value <= bound + 1e-12
            checks.append(Check(metric, kind, value, bound, baseline[metric], passed))
    return checks


def evaluate_model(
    model_uri: str,
    examples_uri: str,
    gate: GateConfig,
    champion: tuple[int, str] | None,
    output_uri: str,
    cache_dir: Path,
    work_dir: Path,
) -> Blessing:
    """Evaluate the candidate (and the champion), apply the gate, publish the blessing.

    Args:
        champion: ``(version, uri)`` of the model now served, or None on a cold start.

    The published folder also holds ``plots/``: confusion matrix and ROC/PR curves (or
    residuals), challenger and champion side by side.
    """
    spec = read_model_spec(model_uri)
    records, labels = eval_data(examples_uri, spec, cache_dir)
    local_model = storage.materialize(model_uri, cache_dir)
    outputs = {"challenger": predict(local_model / SAVED_MODEL_DIR, records)}
    metrics = compute_metrics(spec.task, outputs["challenger"], labels)
    baseline = None
    if champion is not None:
        version, uri = champion
        champion_dir = storage.materialize(uri, cache_dir)
        outputs[f"champion v{version}"] = predict(champion_dir, records)
        baseline = {
            "version": version,
            "uri": uri,
            "metrics": compute_metrics(spec.task, outputs[f"champion v{version}"], labels),
        }
    checks = tuple(gate_checks(gate, metrics, baseline["metrics"] if baseline else None))
    blessed = all(c.passed is not False for c in checks)
    blessing = Blessing(output_uri, model_uri, blessed, metrics, baseline, checks)

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="evaluate-"))
    try:
        (scratch / METRICS_FILE).write_text(json.dumps({"candidate": metrics, "baseline": baseline}, indent=2))
        (scratch / BLESSING_FILE).write_text(json.dumps(blessing.to_dict(), indent=2))
        # TFX's marker files, so a glance at the directory tells the verdict.
        (scratch / ("BLESSED" if blessed else "NOT_BLESSED")).write_bytes(b"")
        evaluation_plots(spec.task, outputs, labels, scratch / PLOTS_DIR)
        storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return blessing


def read_blessing(evaluation_uri: str) -> dict[str, Any]:
    """The published blessing record (what the push re-checks)."""
    storage.require_complete(evaluation_uri)
    return json.loads(storage.read_bytes(storage.join(evaluation_uri, BLESSING_FILE)))


def format_checks(blessing: dict[str, Any]) -> str:
    verdict = "BLESSED" if blessing["blessed"] else "NOT BLESSED"
    return "\n".join([f"blessing: {verdict}", *(f"  - {r}" for r in blessing["reasons"])])
