"""optimize_model: smaller variants of the blessed model, each measured against the original.

Variants: TFLite float32, float16 and dynamic-range. A variant is converted with the TFLite converter from the ``predict_features`` signature
(raw feature tensors in, the same outputs out), run on the eval split with the TFLite
interpreter, and kept only if its accuracy drop stays within the configured tolerance.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.evaluate import compute_metrics, eval_data, predict
from tasks.model import ModelSpec, parse_spec
from tasks.train import FEATURES_SIGNATURE, SAVED_MODEL_DIR, read_model_spec

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class OptimizedArtifact:
    uri: str
    report: dict[str, Any]

    @property
    def kept(self) -> list[str]:
        return [name for name, row in self.report["variants"].items() if row.get("kept")]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kept"] = self.kept
        return data


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def gzipped_size(path: Path) -> int:
    """Bytes after gzip (of the concatenated files for a directory): what a download costs."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return len(gzip.compress(b"".join(f.read_bytes() for f in files), compresslevel=6))


TFLITE_VARIANTS = ("float32", "float16", "dynamic_range")


def convert_tflite(saved_model_dir: Path, variant: str) -> bytes:
    """TFLite: ``float32`` (no quantization), ``float16`` (float16 weights) or ``dynamic_range``
    (int8 weights, float activations).

    String lookups and parsing have no TFLite builtin kernels, so the select TF ops are
    allowed; the interpreter shipped with TensorFlow runs them.
    """
    import tensorflow as tf

    if variant not in TFLITE_VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r} (known: {', '.join(TFLITE_VARIANTS)})")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[FEATURES_SIGNATURE])
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return converter.convert()


def raw_features(spec: ModelSpec, records: list[bytes]) -> dict[str, np.ndarray]:
    """Serialized examples to one rank-1 array per feature (missing values imputed as served)."""
    import tensorflow as tf

    parsed = tf.io.parse_example(records, parse_spec(spec, with_label=False))
    return {name: value.numpy()[:, 0] for name, value in parsed.items()}


def run_tflite(model: bytes, features: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    import tensorflow as tf

    runner = tf.lite.Interpreter(model_content=model).get_signature_runner(FEATURES_SIGNATURE)
    count = len(next(iter(features.values())))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, count, batch_size):
        out = runner(**{k: v[start:start + batch_size] for k, v in features.items()})
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(values) for key, values in parts.items()}


def optimize_model(
    model_uri: str,
    examples_uri: str,
    max_accuracy_drop: float,
    output_uri: str,
    cache_dir: Path,
    work_dir: Path,
) -> OptimizedArtifact:
    """Build, measure and publish the variants; the report compares each with the original."""
    spec = read_model_spec(model_uri)
    saved_model = storage.materialize(model_uri, cache_dir) / SAVED_MODEL_DIR
    records, labels = eval_data(examples_uri, spec, cache_dir)
    quality = "rmse" if spec.task == "regression" else "accuracy"
    original = compute_metrics(spec.task, predict(saved_model, records), labels)
    report: dict[str, Any] = {
        "quality_metric": quality,
        "max_accuracy_drop": max_accuracy_drop,
        "variants": {
            "saved_model": {
                "size_bytes": dir_size(saved_model),
                "gzip_bytes": gzipped_size(saved_model),
                quality: original[quality],
                "kept": True,
            }
        },
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="optimize-"))
    try:
        features = raw_features(spec, records)
        for variant in TFLITE_VARIANTS:
            tflite = convert_tflite(saved_model, variant)
            path = scratch / f"model_{variant}.tflite"
            path.write_bytes(tflite)
            metrics = compute_metrics(spec.task, run_tflite(tflite, features), labels)
            # For rmse a rise is the loss of quality; for accuracy a fall.
            drop = (metrics[quality] - original[quality]) if quality == "rmse" else (original[quality] - metrics[quality])
            kept = drop <= max_accuracy_drop + 1e-12
            report["variants"][f"tflite_{variant}"] = {
                "file": path.name,
                "size_bytes": path.stat().st_size,
                "gzip_bytes": gzipped_size(path),
                quality: metrics[quality],
                "quality_drop": drop,
                "size_ratio": path.stat().st_size / report["variants"]["saved_model"]["size_bytes"],
                "kept": kept,
                "reason": "within tolerance" if kept else f"quality drop {drop:.4f} exceeds {max_accuracy_drop}",
            }
            if not kept:
                path.unlink()
        (scratch / REPORT_FILE).write_text(json.dumps(report, indent=2))
        storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return OptimizedArtifact(uri=output_uri, report=report)


def format_report(report: dict[str, Any]) -> str:
    quality = report["quality_metric"]
    lines = [f"{'variant':<22}{'bytes':>10}{'gzip':>10}{quality:>10}  kept"]
    for name, row in report["variants"].items():
        lines.append(f"{name:<22}{row['size_bytes']:>10}{row['gzip_bytes']:>10}{row[quality]:>10.4f}  {row['kept']}")
    return "\n".join(lines)
