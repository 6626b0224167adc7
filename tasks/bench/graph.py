"""``tfpipe bench graph``: TensorFlow's graph optimizer (Grappler) passes, measured.

Variants (``train.graph_options``):
  defaults        TensorFlow's passes as it sets them
  all_off         disable_meta_optimizer: no pass at all
  no_<pass>       the defaults with that one pass off, for each pass of
                  ``tasks.config.GRAPH_PASSES`` that is on by default

Each variant runs in a process of its own, since the options apply to every graph a process
instantiates: it trains the model (two dense layers of 256 on ``tfpipe datagen`` data, the
same data, seed and batch for all), then loads the exported SavedModel and serves its
``predict_features`` signature. Reported per variant:

* training throughput (examples/s of the training loop, tracing excluded) and its eval loss;
* serving latency p50/p99 at batch 1 and throughput at ``--batch-size`` rows;
* the serving function's nodes after optimization (from its first call's run metadata),
  the same-work check being that every variant answers the same eval rows alike.

Variants run interleaved ``repeat`` times; the medians are reported, and each variant is
compared with ``defaults``.
"""

from __future__ import annotations

import json
import shutil
import statistics as stats_lib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Passes TensorFlow 2.16 runs by default (debug_stripper is off unless asked for).
DEFAULT_ON = ("constant_folding", "layout_optimizer", "arithmetic_optimization", "remapping",
              "dependency_optimization", "loop_optimization", "function_optimization", "shape_optimization",
              "implementation_selector")


def graph_variants() -> dict[str, dict[str, bool]]:
    """Each variant's ``train.graph_options``."""
    return {"defaults": {}, "all_off": {"disable_meta_optimizer": True},
            **{f"no_{name}": {name: False} for name in DEFAULT_ON}}


def bench_graph(rows: int, columns: int = 20, repeat: int = 3, epochs: int = 2, batch_size: int = 1024,
                workdir: Path | None = None, latency_runs: int = 300) -> dict:
    from tasks.bench.common import prepare_examples, versions

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root / "data", rows, columns=columns, task="binary", hidden_units=(256, 256))
        variants = graph_variants()
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for cycle in range(repeat):
            for name, options in variants.items():
                request = {"examples_uri": data.uri, "spec": data.spec.to_dict(), "graph_options": options,
                           "epochs": epochs, "batch_size": batch_size, "latency_runs": latency_runs,
                           "root": str(root / f"{name}-{cycle}"), "cache_dir": str(root / "cache")}
                runs[name].append(_run_variant(request, root / f"{name}-{cycle}.json"))
        return _report(runs, {"rows": rows, "columns": columns, "train_examples": data.counts["train"],
                              "epochs": epochs, "batch_size": batch_size, "hidden_units": [256, 256],
                              "repeat": repeat, "latency_runs": latency_runs}, versions("tensorflow"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_variant(request: dict[str, Any], out: Path) -> dict[str, Any]:
    """One variant in a fresh interpreter (``python -m tasks.bench.graph REQUEST OUT``)."""
    path = out.with_suffix(".request.json")
    path.write_text(json.dumps(request))
    done = subprocess.run([sys.executable, "-m", "tasks.bench.graph", str(path), str(out)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the graph variant {request['graph_options']} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return stats_lib.median(row[key] for row in rows)


def _report(runs: dict[str, list[dict[str, Any]]], params: dict[str, Any], tf_versions: dict[str, str]) -> dict:
    from tasks.bench.common import ratio, suite_report

    measured = {name: {"seconds": 1.0 / _median(rows, "train_examples_per_second"),
                       "all_seconds": [1.0 / row["train_examples_per_second"] for row in rows],
                       "peak_rss_mb": max(row["peak_rss_mb"] for row in rows), "result": rows[-1]}
                for name, rows in runs.items()}
    result = suite_report("graph", {**params, "versions": tf_versions}, measured, {name: 1 for name in measured},
                          "examples/s", [(name, "defaults") for name in measured if name != "defaults"])
    for name, row in result["variants"].items():
        rows = runs[name]
        row["seconds"] = round(params["epochs"] * params["train_examples"] / row["throughput"], 3)
        row.update({key: round(_median(rows, key), 4) for key in
                    ("latency_p50_ms", "latency_p99_ms", "serving_rows_per_second")})
        # Each run's figures, for the spread between processes (``all_seconds`` is per example).
        row["all_runs"] = {key: [round(r[key], 4) for r in rows] for key in
                           ("train_examples_per_second", "latency_p50_ms", "serving_rows_per_second")}
        del row["all_seconds"]
        row["serving_nodes"], row["eval_loss"] = rows[-1]["serving_nodes"], round(rows[-1]["eval_loss"], 4)
    base = result["variants"]["defaults"]
    result["latency_ratios"] = {f"{name}/defaults": ratio(row["latency_p50_ms"], base["latency_p50_ms"])
                                for name, row in result["variants"].items() if name != "defaults"}
    result["serving_throughput_ratios"] = {
        f"{name}/defaults": ratio(row["serving_rows_per_second"], base["serving_rows_per_second"])
        for name, row in result["variants"].items() if name != "defaults"}
    result["serving"] = {name: f"p50 {row['latency_p50_ms']:.3f} ms, p99 {row['latency_p99_ms']:.3f} ms, "
                                f"{row['serving_rows_per_second']:,.0f} rows/s, {row['serving_nodes']} nodes"
                         for name, row in result["variants"].items()}
    answers = {name: rows[-1]["answers"] for name, rows in runs.items()}
    result["checks"] = {f"{name}_answers_as_defaults": _close(answer, answers["defaults"])
                        for name, answer in answers.items() if name != "defaults"}
    return result


def _close(a: list[float], b: list[float], tolerance: float = 0.05) -> bool:
    """The same model answers alike: the training differs in float rounding order only."""
    return len(a) == len(b) and all(abs(x - y) <= tolerance for x, y in zip(a, b))


def measure_variant(request: dict[str, Any]) -> dict[str, Any]:
    """Train and serve under one set of graph options (in this process, which must be fresh)."""
    from tasks.bench.common import PeakRss, training_settings
    from tasks.config import TrainConfig
    from tasks.training.distribution import apply_graph_options
    from tasks.training.loop import train_model
    from tasks.training.model import ModelSpec

    apply_graph_options(request["graph_options"])
    spec, root = ModelSpec.from_dict(request["spec"]), Path(request["root"])
    config = TrainConfig(**training_settings(request["epochs"], request["batch_size"]),
                         graph_options=request["graph_options"])
    with PeakRss() as rss:
        trained = train_model(request["examples_uri"], spec, config, str(root / "model"), root / "ckpt",
                              Path(request["cache_dir"]), root / "work")
        served = _serve(root / "model", request["examples_uri"], spec, Path(request["cache_dir"]),
                        request["batch_size"], request["latency_runs"])
    return {"train_examples_per_second": trained.examples_per_second, "eval_loss": trained.final_metrics["eval_loss"],
            "peak_rss_mb": round(rss.peak / 2**20, 1), **served}


def _serve(model_dir: Path, examples_uri: str, spec, cache_dir: Path, batch_size: int,
           latency_runs: int) -> dict[str, Any]:
    """Load the exported model, count its serving graph's nodes at the first call, time it."""
    from tensorflow.python.eager import context

    from tasks.artifacts import SAVED_MODEL_DIR
    from tasks.evaluate import eval_data
    from tasks.optimize import Measurement, measure_speed, raw_features, saved_model_runner

    records = eval_data(examples_uri, spec, cache_dir)[0][:256]
    features = raw_features(spec, records)
    runner = saved_model_runner(model_dir / SAVED_MODEL_DIR)
    eager = context.context()
    eager.enable_run_metadata()
    try:
        outputs = runner.predict(features)
        metadata = eager.export_run_metadata()
    finally:
        eager.disable_run_metadata()
    nodes = sum(len(graph.post_optimization_graph.node) for graph in metadata.function_graphs)
    speed = measure_speed(runner, features, Measurement(latency_runs, batch_size, 1.0))
    return {"serving_nodes": nodes, "latency_p50_ms": speed["latency_p50_ms"],
            "latency_p99_ms": speed["latency_p99_ms"], "serving_rows_per_second": speed["throughput_per_second"],
            "answers": [round(float(v), 4) for v in outputs["scores"][:, -1]]}


if __name__ == "__main__":
    request_path, out_path = sys.argv[1:3]
    Path(out_path).write_text(json.dumps(measure_variant(json.loads(Path(request_path).read_text()))))
