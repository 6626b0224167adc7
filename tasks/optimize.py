"""optimize_model: smaller or faster variants of the blessed model, each measured against the original.

Variants (``optimize.variants``):

* ``tflite_float32``, ``tflite_float16``, ``tflite_dynamic_range``: the TFLite converter on the
  ``predict_features`` signature (raw feature tensors in, the same outputs out).
* ``tflite_int8``: full-integer quantization, calibrated on ``optimize.representative_examples``
  examples of the train split. Every builtin op runs in int8; inputs and outputs stay float
  and strings (a string lookup has no integer form).
* ``qat_int8`` (opt-in, not in the default list): quantization-aware training
  (:mod:`tasks.quantization`). The dense layers are fine-tuned on the train split with
  fake quantization for ``optimize.qat.epochs`` epochs, then converted and calibrated as
  ``tflite_int8``. A model tfmot cannot annotate is a recorded skip.
* ``pruned``: magnitude pruning with ``tensorflow-model-optimization``. The dense layers are
  fine-tuned on the train split with a polynomial sparsity schedule up to
  ``optimize.pruning.target_sparsity``, stripped, and exported as a SavedModel. Its raw size is
  the original's; the gain is the gzip size.
* ``tensorrt_fp16``: TF-TRT (``tf.experimental.tensorrt.Converter``, FP16) when a GPU and the
  TensorRT libraries are present; otherwise a recorded skip with its reason, never a failure.

Every variant, and the original SavedModel, is measured on the eval split: file size raw and
gzipped, latency p50/p99 at batch 1, throughput at ``optimize.throughput_batch``, and the
quality metric (accuracy, or RMSE for regression). All are measured on the same raw feature
tensors, in the same process. A classifier's variant whose accuracy drops by more than
``optimize.max_accuracy_drop`` (absolute), or a regressor's variant whose RMSE grows by more
than ``optimize.max_rmse_increase`` (relative: 0.05 is 5% of the original's RMSE, whatever the
label's unit), is rejected, and its files are not published.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.coders import first_records
from tasks.config import OptimizeConfig, PruningConfig, QatConfig
from tasks.evaluate import compute_metrics, eval_data
from tasks.training.model import ModelSpec, parse_spec, tensor_names
from tasks.artifacts import CHART_FILE, FEATURES_SIGNATURE, REPORT_FILE, SAVED_MODEL_DIR, OptimizedArtifact
from tasks.training.export import read_model_spec

log = logging.getLogger(__name__)

TFLITE_VARIANTS = ("float32", "float16", "dynamic_range", "int8")


@dataclass(frozen=True)
class Measurement:
    """How a variant is timed: ``latency_runs`` calls at batch 1 (after warm-up), and calls at
    ``throughput_batch`` rows until the rate is stable, for at most ``throughput_seconds`` (the
    first two are the ``optimize`` section's)."""

    latency_runs: int
    throughput_batch: int
    throughput_seconds: float = 0.5


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in _files(path))


def gzipped_size(path: Path) -> int:
    """Bytes after gzip (of the concatenated files for a directory): what a download costs."""
    return len(gzip.compress(b"".join(f.read_bytes() for f in _files(path)), compresslevel=6))


def tflite_converter(saved_model_dir: Path):
    """A TFLite converter over the ``predict_features`` signature, loaded once: each
    :func:`convert_tflite` call sets every option it reads, so one converter makes every
    variant (the same bytes as a converter per variant, without loading the model again)."""
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[FEATURES_SIGNATURE])


def convert_tflite(saved_model_dir: Path, variant: str, representative: dict[str, np.ndarray] | None = None,
                   converter=None) -> bytes:
    """TFLite: ``float32`` (no quantization), ``float16`` (float16 weights), ``dynamic_range``
    (int8 weights, float activations) or ``int8`` (int8 weights and activations, calibrated on
    ``representative`` raw features). ``converter``: one from :func:`tflite_converter` over
    ``saved_model_dir``, reused.

    String lookups and parsing have no TFLite builtin kernels, so the select TF ops are
    allowed; the interpreter shipped with TensorFlow runs them.
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r} (known: {', '.join(TFLITE_VARIANTS)})")
    if variant == "int8" and not representative:
        raise ValueError("int8 quantization needs representative examples")
    converter = converter or tflite_converter(saved_model_dir)
    converter.optimizations = [] if variant == "float32" else [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16] if variant == "float16" else []
    converter.representative_dataset = None
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if variant == "int8":
        count = len(next(iter(representative.values())))

        def calibration():
            for i in range(count):
                yield {name: values[i:i + 1] for name, values in representative.items()}

        converter.representative_dataset = calibration
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    converter.target_spec.supported_ops = [builtins, tf.lite.OpsSet.SELECT_TF_OPS]
    return converter.convert()


def raw_features(spec: ModelSpec, records: list[bytes]) -> dict[str, np.ndarray]:
    """Serialized examples to one rank-1 array per feature (missing values imputed as served),
    keyed as the ``predict_features`` signature names its inputs."""
    import tensorflow as tf

    parsed = tf.io.parse_example(records, parse_spec(spec, with_label=False))
    names = tensor_names(spec)
    return {names[column]: value.numpy()[:, 0] for column, value in parsed.items()}


def _rows(features: dict[str, np.ndarray], count: int, start: int = 0) -> dict[str, np.ndarray]:
    """``count`` rows from ``start``, wrapping around (a large batch from a small eval split)."""
    total = len(next(iter(features.values())))
    index = (np.arange(count) + start) % total
    return {name: values[index] for name, values in features.items()}


class Runner:
    """Calls one variant on raw feature arrays: ``predict(features) -> outputs``."""

    def __init__(self, predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 fixed: Callable[[int], Callable[[dict[str, np.ndarray]], Any]] | None = None) -> None:
        self.predict = predict
        # A caller specialized to one batch size (a TFLite interpreter resized once).
        self.fixed = fixed or (lambda _size: predict)


def saved_model_runner(saved_model_dir: Path) -> Runner:
    import tensorflow as tf

    from tasks.training.export import load_saved_model

    signature = load_saved_model(saved_model_dir).signatures[FEATURES_SIGNATURE]
    dtypes = {name: spec.dtype for name, spec in signature.structured_input_signature[1].items()}

    def predict(features):
        inputs = {k: tf.constant(v, dtype=dtypes[k]) for k, v in features.items()}
        return {k: v.numpy() for k, v in signature(**inputs).items()}

    return Runner(predict)


def tflite_runner(model: bytes, chunk: int = 256) -> Runner:
    import tensorflow as tf

    def fixed(size: int):
        interpreter = tf.lite.Interpreter(model_content=model)
        runner = interpreter.get_signature_runner(FEATURES_SIGNATURE)
        return lambda features: runner(**features)

    def predict(features):
        runner = tf.lite.Interpreter(model_content=model).get_signature_runner(FEATURES_SIGNATURE)
        count = len(next(iter(features.values())))
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, count, chunk):
            for key, value in runner(**{k: v[start:start + chunk] for k, v in features.items()}).items():
                parts.setdefault(key, []).append(value)
        return {key: np.concatenate(values) for key, values in parts.items()}

    return Runner(predict, fixed)


def run_tflite(model: bytes, features: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    return tflite_runner(model, batch_size).predict(features)


def measure_speed(runner: Runner, features: dict[str, np.ndarray], how: Measurement) -> dict[str, float]:
    """Latency p50/p99 (ms) at batch 1 and throughput (rows/s) at a large batch."""
    single = runner.fixed(1)
    one = _rows(features, 1)
    for _ in range(10):
        single(one)
    latencies = []
    for i in range(how.latency_runs):
        row = _rows(features, 1, start=i)
        started = time.perf_counter()
        single(row)
        latencies.append(time.perf_counter() - started)
    calls, seconds = _throughput_calls(runner.fixed(how.throughput_batch), _rows(features, how.throughput_batch),
                                       how.throughput_seconds)
    return {"latency_p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "latency_p99_ms": float(np.percentile(latencies, 99) * 1e3),
            "throughput_per_second": calls * how.throughput_batch / seconds}


def _throughput_calls(bulk, batch, budget: float, window: float = 0.05, tolerance: float = 0.05) -> tuple[int, float]:
    """Call ``bulk(batch)`` in windows of at least ``window`` seconds until two windows in a row
    agree on the rate within ``tolerance`` (at least three windows), or ``budget`` seconds ran.
    Returns the calls and the seconds they took, all windows together."""
    bulk(batch)  # warm-up
    calls, seconds, rates = 0, 0.0, []
    while seconds < budget:
        count, started = 0, time.perf_counter()
        while count < 1 or time.perf_counter() - started < window:
            bulk(batch)
            count += 1
        took = time.perf_counter() - started
        calls, seconds = calls + count, seconds + took
        rates.append(count / took)
        if len(rates) >= 3 and abs(rates[-1] - rates[-2]) <= tolerance * rates[-2]:
            break
    return calls, seconds


def tensorrt_unavailable() -> str | None:
    """Why TF-TRT cannot run here, or None when it can."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return "no GPU visible to TensorFlow"
    try:
        from tensorflow.compiler.tf2tensorrt._pywrap_py_utils import get_loaded_tensorrt_version, is_tensorrt_enabled
    except ImportError as error:
        return f"this TensorFlow build has no TF-TRT ({error})"
    if not is_tensorrt_enabled():
        return "this TensorFlow build has no TensorRT support"
    if tuple(get_loaded_tensorrt_version()) == (0, 0, 0):
        return "the TensorRT libraries (libnvinfer) could not be loaded"
    return None


def convert_tensorrt(saved_model_dir: Path, out_dir: Path) -> Path:
    """TF-TRT FP16 of the ``predict_features`` signature. Engines are built at the first call of
    each batch shape (the measurement's warm-up), so no shapes are fixed here."""
    import tensorflow as tf

    converter = tf.experimental.tensorrt.Converter(
        input_saved_model_dir=str(saved_model_dir), input_saved_model_signature_key=FEATURES_SIGNATURE,
        precision_mode="FP16",
    )
    converter.convert()
    converter.save(str(out_dir))
    return out_dir


def _train_split(examples_uri: str, cache_dir: Path) -> tuple[list[str], int]:
    """The train split's local shard files and its example count."""
    from tasks.artifacts import Examples

    examples = Examples.open(examples_uri)
    return examples.files("train", cache_dir), examples.count("train")


def optimize_model(
    model_uri: str,
    examples_uri: str,
    config: OptimizeConfig,
    output_uri: str,
    cache_dir: Path,
    work_dir: Path,
    build_model: Callable[[ModelSpec], Any] | None = None,
    throughput_seconds: float = Measurement.throughput_seconds,
) -> OptimizedArtifact:
    """Build, measure and publish the variants of ``config.variants``; the report compares each
    with the original, and keeps those within ``config.max_accuracy_drop`` (classifiers) or
    ``config.max_rmse_increase`` (regressors).

    Args:
        config: The ``optimize`` section (its ``pruning.batch_size`` or ``qat.batch_size`` unset:
            ``train.batch_size``'s default).
        build_model: Builds the (untrained) Keras model of a spec, for pruning and
            quantization-aware training; default: the model built from the schema
            (:func:`tasks.training.model.build_model`).
        throughput_seconds: How long each variant's throughput is measured at most (it stops once stable).
    """
    variants = tuple(config.variants)
    spec = read_model_spec(model_uri)
    saved_model = storage.materialize(model_uri, cache_dir) / SAVED_MODEL_DIR
    records, labels = eval_data(examples_uri, spec, cache_dir)
    measurement = Measurement(config.latency_runs, config.throughput_batch, throughput_seconds)
    judged = _Judged(spec, raw_features(spec, records), labels, saved_model, measurement, config.max_accuracy_drop,
                     config.max_rmse_increase)
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="optimize-"))
    train_files, train_count = _train_split(examples_uri, cache_dir)
    try:
        quantized = {"tflite_int8", "qat_int8"} & set(variants)
        calibration = first_records(train_files, config.representative_examples) if quantized else []
        _tflite_variants(judged, saved_model, variants, calibration, scratch)
        if "qat_int8" in variants:
            _qat_variant(judged, saved_model, train_files, train_count, calibration, config.qat, build_model, scratch)
        if "pruned" in variants:
            _pruned_variant(judged, saved_model, train_files, train_count, config.pruning, build_model, scratch)
        if "tensorrt_fp16" in variants:
            _tensorrt_variant(judged, saved_model, scratch)
        (scratch / REPORT_FILE).write_text(json.dumps(judged.report, indent=2))
        from tasks.plots import optimization_chart

        optimization_chart(judged.report, scratch / CHART_FILE)
        storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return OptimizedArtifact(uri=output_uri, report=judged.report)


class _Judged:
    """The report as it is built: the original's row, then each variant's, judged against it on
    the eval split (kept within the tolerance, else its file removed)."""

    def __init__(self, spec: ModelSpec, features, labels, saved_model: Path, measurement: Measurement,
                 max_accuracy_drop: float, max_rmse_increase: float) -> None:
        self.spec, self.features, self.labels, self.measurement = spec, features, labels, measurement
        self.quality = "rmse" if spec.task == "regression" else "accuracy"
        self.tolerance = max_rmse_increase if self.quality == "rmse" else max_accuracy_drop
        runner = saved_model_runner(saved_model)
        self.original = compute_metrics(spec.task, runner.predict(features), labels)
        self.base = {
            "kind": "saved_model", "file": None, "size_bytes": dir_size(saved_model),
            "gzip_bytes": gzipped_size(saved_model), self.quality: self.original[self.quality], "quality_drop": 0.0,
            "size_ratio": 1.0, **measure_speed(runner, features, measurement), "kept": True, "reason": "the original",
        }
        self.report: dict[str, Any] = {
            "quality_metric": self.quality,
            "quality_drop_unit": "relative" if self.quality == "rmse" else "absolute",
            "max_quality_drop": self.tolerance,
            "max_accuracy_drop": max_accuracy_drop,
            "max_rmse_increase": max_rmse_increase,
            "eval_examples": len(labels),
            "measurement": asdict(measurement),
            "variants": {"saved_model": self.base},
        }

    def judge(self, name: str, kind: str, path: Path, runner: Runner, extra: dict[str, Any] | None = None) -> None:
        quality, original = self.quality, self.original[self.quality]
        metrics = compute_metrics(self.spec.task, runner.predict(self.features), self.labels)
        # For rmse a rise is the loss of quality, relative to the original (the label's unit is
        # arbitrary); for accuracy a fall, in accuracy points.
        drop = (metrics[quality] - original) / max(original, 1e-12) if quality == "rmse" else original - metrics[quality]
        kept = drop <= self.tolerance + 1e-12
        row = {"kind": kind, "file": path.name, "size_bytes": dir_size(path), "gzip_bytes": gzipped_size(path),
               quality: metrics[quality], "quality_drop": drop}
        row["size_ratio"] = row["size_bytes"] / self.base["size_bytes"]
        row.update(measure_speed(runner, self.features, self.measurement))
        row.update(extra or {})
        row["kept"] = kept
        setting = "optimize.max_rmse_increase" if quality == "rmse" else "optimize.max_accuracy_drop"
        row["reason"] = "within tolerance" if kept else f"quality drop {drop:.4f} exceeds {setting} {self.tolerance:g}"
        self.report["variants"][name] = row
        if not kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def skip(self, name: str, reason: str) -> None:
        log.info("variant %s skipped: %s", name, reason)
        self.report["variants"][name] = {"kind": "skipped", "kept": False, "skipped": True, "reason": reason}


def _tflite_variants(judged: _Judged, saved_model: Path, variants: tuple[str, ...], calibration: list[bytes],
                     scratch: Path) -> None:
    converter = None
    for variant in TFLITE_VARIANTS:
        name = f"tflite_{variant}"
        if name not in variants:
            continue
        converter = converter or tflite_converter(saved_model)
        representative = raw_features(judged.spec, calibration) if variant == "int8" else None
        tflite = convert_tflite(saved_model, variant, representative, converter)
        path = scratch / f"model_{variant}.tflite"
        path.write_bytes(tflite)
        judged.judge(name, "tflite", path, tflite_runner(tflite),
                     {"representative_examples": len(calibration)} if representative else None)


def _pruned_variant(judged: _Judged, saved_model: Path, train_files: list[str], train_count: int,
                    pruning: PruningConfig, build_model, scratch: Path) -> None:
    from tasks.config import TrainConfig
    from tasks.finetuning import prune_model
    from tasks.training import model as model_lib

    path = scratch / "pruned_saved_model"
    try:
        sparsity = prune_model(saved_model, judged.spec, train_files, train_count, path, pruning.target_sparsity,
                               pruning.epochs, pruning.batch_size or TrainConfig.model_fields["batch_size"].default,
                               pruning.learning_rate, build_model or (lambda s: model_lib.build_model(s, 0)))
        judged.judge("pruned", "saved_model", path, saved_model_runner(path),
                     {"sparsity": sparsity, "target_sparsity": pruning.target_sparsity})
    except ValueError as error:
        judged.skip("pruned", str(error))


def _qat_variant(judged: _Judged, saved_model: Path, train_files: list[str], train_count: int,
                 calibration: list[bytes], qat: QatConfig, build_model, scratch: Path) -> None:
    """Quantization-aware fine-tuning (:mod:`tasks.quantization`), then the same full-integer
    conversion and calibration as ``tflite_int8``; the fine-tuned SavedModel is not published."""
    from tasks.config import TrainConfig
    from tasks.quantization import train_quantization_aware
    from tasks.training import model as model_lib

    with tempfile.TemporaryDirectory(dir=scratch.parent, prefix="qat-") as folder:
        exported = Path(folder) / "qat_saved_model"
        try:
            train_quantization_aware(saved_model, judged.spec, train_files, train_count, exported, qat.epochs,
                                     qat.batch_size or TrainConfig.model_fields["batch_size"].default,
                                     qat.learning_rate, build_model or (lambda s: model_lib.build_model(s, 0)))
        except ValueError as error:
            judged.skip("qat_int8", str(error))
            return
        tflite = convert_tflite(exported, "int8", raw_features(judged.spec, calibration))
    path = scratch / "model_qat_int8.tflite"
    path.write_bytes(tflite)
    judged.judge("qat_int8", "tflite", path, tflite_runner(tflite),
                 {"representative_examples": len(calibration), "qat_epochs": qat.epochs})


def _tensorrt_variant(judged: _Judged, saved_model: Path, scratch: Path) -> None:
    why = tensorrt_unavailable()
    if why:
        judged.skip("tensorrt_fp16", f"TF-TRT needs a GPU and TensorRT: {why}")
        return
    try:
        path = convert_tensorrt(saved_model, scratch / "tensorrt_fp16_saved_model")
        judged.judge("tensorrt_fp16", "saved_model", path, saved_model_runner(path))
    except Exception as error:  # noqa: BLE001 - an optional variant never fails the step
        log.warning("TF-TRT conversion failed", exc_info=True)
        judged.skip("tensorrt_fp16", f"TF-TRT conversion failed: {type(error).__name__}: {error}")


def format_report(report: dict[str, Any]) -> str:
    """The variants as a table (columns as wide as their widest cell); skipped ones with their reason."""
    from tasks.tables import format_table

    quality = report["quality_metric"]
    drop = "rmse +%" if quality == "rmse" else "drop"
    rows, skipped = [], []
    for name, row in report["variants"].items():
        if row.get("skipped"):
            skipped.append(f"{name}: skipped: {row['reason']}")
            continue
        lost = f"{100 * row['quality_drop']:.2f}" if quality == "rmse" else f"{row['quality_drop']:.4f}"
        rows.append((name, row["size_bytes"], row["gzip_bytes"], f"{row[quality]:.4f}", lost,
                     f"{row['latency_p50_ms']:.3f}", f"{row['latency_p99_ms']:.3f}",
                     f"{row['throughput_per_second']:,.0f}", "yes" if row["kept"] else "no"))
    table = format_table(("variant", "bytes", "gzip", quality, drop, "p50 ms", "p99 ms", "rows/s", "kept"), rows,
                         right=range(1, 8))
    return "\n".join([table, *skipped])
