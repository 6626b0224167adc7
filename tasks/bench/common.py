"""What every benchmark shares: peak RSS while a variant runs, library versions, running variants
interleaved ``repeat`` times (median time, throughput, ratios), the report and its table, the
examples they train and validate on, and the check that two statistics agree (GUIDE §4).

Each suite generates its data (``tfpipe datagen``), warms every variant up on a small input,
then runs the variants interleaved and checks that they did the same work before it reports
anything.
"""


from __future__ import annotations

import json
import os
import platform
import statistics as stats_lib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tasks.settings import usable_cpus



class PeakRss:
    """Samples this process's resident memory while a variant runs."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # pragma: no cover - not Linux
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __enter__(self):
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def versions(*names: str) -> dict[str, str]:
    """The installed version of each distribution that is installed."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_variants(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, dict[str, Any]]:
    """Interleave the variants ``repeat`` times: median seconds, peak RSS, last result."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int] = {name: 0 for name in variants}
    results: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in variants.items():
            with PeakRss() as rss:
                started = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], rss.peak)
    return {
        name: {"seconds": stats_lib.median(times[name]), "all_seconds": times[name],
               "peak_rss_mb": round(peaks[name] / 2**20, 1), "result": results[name]}
        for name in variants
    }


def ratio(a: float, b: float) -> float:
    return float(f"{a / b:.4g}")  # four significant digits, also for small ratios


def suite_report(suite: str, params: dict, measured: dict[str, dict], rows: dict[str, int], unit: str,
            ratios: list[tuple[str, str]], extra: dict | None = None) -> dict:
    variants = {}
    for name, row in measured.items():
        variants[name] = {
            "throughput": round(rows[name] / row["seconds"], 1),
            "unit": unit,
            "seconds": round(row["seconds"], 4),
            "all_seconds": [float(f"{s:.4g}") for s in row["all_seconds"]],  # per example in some suites: tiny
            "peak_rss_mb": row["peak_rss_mb"],
        }
    result = {
        "suite": suite,
        "params": params,
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": usable_cpus(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": versions("tensorflow", "tensorflow-data-validation", "tfx-bsl", "pyarrow", "apache-beam",
                                  "numpy", "tfpipe"),
        },
        "variants": variants,
        "ratios": {f"{a}/{b}": ratio(variants[a]["throughput"], variants[b]["throughput"]) for a, b in ratios},
    }
    if extra:
        result.update(extra)
    return result


def format_table(result: dict) -> str:
    lines = [f"tfpipe bench {result['suite']}  {json.dumps(result['params'])}  cpus={result['machine']['cpus']}", ""]
    width = max([20, *(len(name) + 2 for name in result["variants"])])
    lines.append(f"  {'variant':<{width}}{'throughput':>14} {'unit':<7}{'seconds':>9}{'peak RSS MB':>13}")
    for name, row in result["variants"].items():
        lines.append(f"  {name:<{width}}{row['throughput']:>14,.0f} {row['unit']:<7}{row['seconds']:>9.3f}"
                     f"{row['peak_rss_mb']:>13.0f}")
    lines.append("")
    for name, ratio in result["ratios"].items():
        lines.append(f"  {name:<40}{ratio:>8.2f}x")
    for key in ("time_ratios", "latency_ratios", "serving_throughput_ratios", "serving", "gzip_size_ratios", "stages",
                "skipped", "rejected", "checks", "targets"):
        if result.get(key):
            lines += ["", f"  {key}:"] + [f"    {k}: {v}" for k, v in result[key].items()]
    if "report" in result:  # a suite's own table (optimize: the optimization report)
        lines += ["", *(f"  {line}" for line in result["report"].splitlines())]
    return "\n".join(lines)


# --- ingest ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedExamples:
    """Generated data taken through ingest and validation, ready to train on."""

    uri: str
    spec: Any  # tasks.training.model.ModelSpec
    counts: dict[str, int]
    files: dict[str, list[str]]


def prepare_examples(root: Path, rows: int, columns: int = 20, task: str = "binary", num_shards: int = 4,
                     hidden_units: tuple[int, ...] = (32, 16), seed: int = 1) -> PreparedExamples:
    """``tfpipe datagen`` data, ingested and validated by the pipeline's own steps, and its model spec."""
    from tasks.config import config_from_mapping
    from tasks.bench.datagen import generate
    from tasks.artifacts import Examples
    from tasks.ingest import ingest_examples
    from tasks.training.model import model_spec_from
    from tasks.validate import load_schema, load_statistics, validate_examples

    root.mkdir(parents=True, exist_ok=True)
    source = root / "data.parquet"
    generate(source, rows, columns=columns, task=task, seed=seed)
    config = config_from_mapping(
        {"name": "bench", "data": {"source": [str(source)], "num_shards": num_shards}, "label": "label",
         "task": task}, "bench",
    )
    cache, work = root / "cache", root / "work"
    examples = ingest_examples(config, [str(source)], str(root / "examples"), work)
    validation = validate_examples(examples.uri, str(root / "statistics"), str(root / "anomalies"),
                                   str(root / "schema.pbtxt"), "label", cache, work)
    spec = model_spec_from(load_schema(validation.statistics_uri, cache),
                           load_statistics(validation.statistics_uri, "train", cache),
                           label="label", task=task, features=[c for c in examples.columns if c != "label"],
                           hidden_units=list(hidden_units), embedding_dim=4)
    opened = Examples.open(examples.uri)
    return PreparedExamples(examples.uri, spec, dict(examples.counts),
                            {split: opened.files(split, cache) for split in opened.splits})


def training_settings(epochs: int, batch_size: int, hidden_units: tuple[int, ...] = (256, 256)) -> dict[str, Any]:
    """The ``train`` settings the training benchmarks share: the same schedule and model for every
    variant, no early stop, TensorBoard or mid-epoch checkpoint, the parsed examples in memory."""
    return {"epochs": epochs, "batch_size": batch_size, "learning_rate": 0.003, "hidden_units": list(hidden_units),
            "early_stopping": {"patience": None}, "tensorboard": False, "cache": "memory",
            "checkpoint_every_steps": 10**9}


def compare_statistics(a, b) -> list[str]:
    """Differences between two statistics protos (counts exact, moments to 1e-5)."""
    problems = []
    da, db = a.datasets[0], b.datasets[0]
    if da.num_examples != db.num_examples:
        problems.append(f"num_examples {da.num_examples} != {db.num_examples}")
    fa = {".".join(f.path.step): f for f in da.features}
    fb = {".".join(f.path.step): f for f in db.features}
    if set(fa) != set(fb):
        problems.append(f"features differ: {sorted(set(fa) ^ set(fb))}")
    for name in sorted(set(fa) & set(fb)):
        x, y = fa[name], fb[name]
        if x.HasField("num_stats"):
            for field in ("min", "max", "mean", "std_dev", "num_zeros"):
                u, v = getattr(x.num_stats, field), getattr(y.num_stats, field)
                if not np.isclose(u, v, rtol=1e-5, atol=1e-9):
                    problems.append(f"{name}.{field} {u} != {v}")
            if x.num_stats.common_stats.num_non_missing != y.num_stats.common_stats.num_non_missing:
                problems.append(f"{name}.num_non_missing differs")
        elif x.HasField("string_stats"):
            if x.string_stats.unique != y.string_stats.unique:
                problems.append(f"{name}.unique {x.string_stats.unique} != {y.string_stats.unique}")
            if x.string_stats.common_stats.num_non_missing != y.string_stats.common_stats.num_non_missing:
                problems.append(f"{name}.num_non_missing differs")
            top_x = [(v.value, v.frequency) for v in x.string_stats.top_values]
            top_y = [(v.value, v.frequency) for v in y.string_stats.top_values]
            if top_x != top_y:
                problems.append(f"{name}.top_values differ")
    return problems


def write(result: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
