"""``tfpipe bench optimize``: every optimized variant against the original SavedModel, in one run.

A binary model (two dense layers of 256) is trained on ``tfpipe datagen`` data and put through
``optimize_model``. Then every variant that was built is timed again, interleaved, ``repeat``
times after a warm-up, on the same raw feature rows of the eval split: latency p50/p99 at
batch 1 and throughput at a large batch; the medians are reported. The reference is the
original SavedModel (its ``predict_features`` signature, the same inputs the TFLite variants
take); the floor is a matrix product of the same layer sizes in NumPy, the arithmetic the
dense layers cannot avoid. Sizes (raw and gzipped) and quality come from the optimization
report; the same-work check is that every variant answered the same eval examples.
"""

from __future__ import annotations

import shutil
import statistics as stats_lib
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tasks.bench.common import PeakRss, prepare_examples, ratio, versions


def _numpy_floor(spec, hidden: tuple[int, ...]):
    """The dense layers' arithmetic on already-encoded inputs (float32 NumPy matmuls)."""
    rng = np.random.default_rng(0)
    width = sum(1 if not f.categorical else spec.embedding_dim for f in spec.features)
    sizes = (width, *hidden, 1)
    weights = [rng.standard_normal((a, b), dtype=np.float32) for a, b in zip(sizes, sizes[1:])]

    inputs: dict[int, np.ndarray] = {}

    def run(features: dict[str, np.ndarray]) -> np.ndarray:
        count = len(next(iter(features.values())))
        x = inputs.setdefault(count, rng.standard_normal((count, width), dtype=np.float32))
        for w in weights[:-1]:
            x = np.maximum(x @ w, 0)
        return x @ weights[-1]

    return run


def bench_optimize(rows: int, columns: int = 20, repeat: int = 3, workdir: Path | None = None,
                   throughput_batch: int = 1024, latency_runs: int = 200) -> dict:
    import os

    from tasks.config import OPTIMIZE_VARIANTS, OptimizeConfig, PruningConfig, QatConfig, TrainConfig
    from tasks.evaluate import eval_data
    from tasks.optimize import (Measurement, Runner, format_report, measure_speed, optimize_model, raw_features,
                                saved_model_runner, tflite_runner)
    from tasks.artifacts import SAVED_MODEL_DIR
    from tasks.training.loop import train_model

    hidden = (256, 256)
    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root / "data", rows, columns=columns, task="binary", hidden_units=hidden)
        params = TrainConfig(epochs=2, batch_size=512, learning_rate=0.003, hidden_units=list(hidden),
                             early_stopping={"patience": None}, tensorboard=False, cache="memory")
        model = train_model(data.uri, data.spec, params, str(root / "model"), root / "ckpt", root / "cache",
                            root / "work")
        # Every variant, the opt-in qat_int8 too, measured the same way.
        config = OptimizeConfig(variants=list(OPTIMIZE_VARIANTS),
                                pruning=PruningConfig(target_sparsity=0.8, epochs=2, batch_size=256),
                                qat=QatConfig(epochs=1, batch_size=256), latency_runs=latency_runs,
                                throughput_batch=throughput_batch)
        optimized = optimize_model(model.uri, data.uri, config, str(root / "optimized"), root / "cache", root / "work")
        measurement = Measurement(latency_runs=latency_runs, throughput_batch=throughput_batch)
        report = optimized.report
        records, _ = eval_data(data.uri, data.spec, root / "cache")
        features = raw_features(data.spec, records)
        runners: dict[str, Runner] = {"saved_model": saved_model_runner(Path(model.uri) / SAVED_MODEL_DIR)}
        for name, row in report["variants"].items():
            if name == "saved_model" or row.get("skipped") or not row["kept"]:
                continue
            path = Path(optimized.uri) / row["file"]
            runners[name] = tflite_runner(path.read_bytes()) if row["kind"] == "tflite" else saved_model_runner(path)
        floor = _numpy_floor(data.spec, hidden)
        runners["floor"] = Runner(lambda f: {"logits": floor(f)})
        answered = {name: len(next(iter(runner.predict(features).values()))) for name, runner in runners.items()}
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
        peaks = {name: 0 for name in runners}
        for _ in range(repeat):
            for name, runner in runners.items():
                with PeakRss() as rss:
                    samples[name].append(measure_speed(runner, features, measurement))
                peaks[name] = max(peaks[name], rss.peak)
        quality = report["quality_metric"]
        variants: dict[str, dict[str, Any]] = {}
        for name, runs in samples.items():
            throughput = stats_lib.median(r["throughput_per_second"] for r in runs)
            row = report["variants"].get(name, {})
            variants[name] = {
                "throughput": round(throughput, 1), "unit": "rows/s",
                "seconds": round(throughput_batch / throughput, 6),
                "all_throughputs": [round(r["throughput_per_second"], 1) for r in runs],
                "peak_rss_mb": round(peaks[name] / 2**20, 1),
                "latency_p50_ms": round(stats_lib.median(r["latency_p50_ms"] for r in runs), 4),
                "latency_p99_ms": round(stats_lib.median(r["latency_p99_ms"] for r in runs), 4),
                **{k: row[k] for k in ("size_bytes", "gzip_bytes", quality, "quality_drop") if k in row},
            }
        base = variants["saved_model"]
        names = [n for n in variants if n != "saved_model"]
        return {
            "suite": "optimize",
            "params": {"rows": rows, "columns": columns, "eval_examples": len(records), "hidden_units": list(hidden),
                       "throughput_batch": throughput_batch, "latency_runs": latency_runs, "repeat": repeat},
            "machine": {"cpus": os.cpu_count(), "versions": versions("tensorflow", "tensorflow-model-optimization",
                                                                       "numpy", "tfpipe")},
            "variants": variants,
            "ratios": {f"{n}/saved_model": ratio(variants[n]["throughput"], base["throughput"]) for n in names},
            "latency_ratios": {f"{n}/saved_model": ratio(variants[n]["latency_p50_ms"], base["latency_p50_ms"])
                               for n in names},
            "gzip_size_ratios": {f"{n}/saved_model": ratio(variants[n]["gzip_bytes"], base["gzip_bytes"])
                                 for n in names if "gzip_bytes" in variants[n]},
            "skipped": {n: r["reason"] for n, r in report["variants"].items() if r.get("skipped")},
            "rejected": {n: r["reason"] for n, r in report["variants"].items()
                         if not r.get("skipped") and not r["kept"]},
            "checks": {"every_variant_answered_the_eval_examples": set(answered.values()) == {len(records)}},
            "report": format_report(report),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
