"""``tfpipe bench ingest|validate``: ours against a reference and the floor, in one process run.

Each suite generates its data (``tfpipe datagen``), warms every variant up on a small
input, then runs the variants interleaved ``repeat`` times and reports the median time,
rows/s, peak RSS while the variant ran, and the ratios; it checks that the variants did the
same work (GUIDE §4) before it reports anything.

ingest:
  ours               tasks.ingest (pyarrow batches, vectorized encoder, GZIP on all cores)
  per_row_reference  pandas rows to ``tf.train.Example`` one by one (the ExampleGen way),
                     ``tf.io.TFRecordWriter`` at the same GZIP level
  floor              the slowest unavoidable stage: pyarrow reading the source, or
                     compressing our serialized records at our GZIP level on all cores

validate (statistics of the train split):
  ours               TFDV's generators on one thread per core, each inflating (ISA-L), parsing
                     (tf.io.parse_example) and accumulating whole shards (engine streaming)
  tfdv_default       ``tfdv.generate_statistics_from_tfrecord`` with default options
  beam_all_cores     the same on Beam's DirectRunner, multi_processing, one worker per core
  in_memory          every record decoded by tfx-bsl into one batch, ``generate_statistics_in_memory``
  tfdv_sampled_10pct tfdv_default with ``StatsOptions(sample_rate=0.1)`` (not the same statistics)
  floor              inflating the shards on all cores (ISA-L), the least any reader must do
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics as stats_lib
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tasks.settings import usable_cpus


class _PeakRss:
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
            with _PeakRss() as rss:
                started = time.perf_counter()
                results[name] = fn()
                times[name].append(time.perf_counter() - started)
            peaks[name] = max(peaks[name], rss.peak)
    return {
        name: {"seconds": stats_lib.median(times[name]), "all_seconds": times[name],
               "peak_rss_mb": round(peaks[name] / 2**20, 1), "result": results[name]}
        for name in variants
    }


def _ratio(a: float, b: float) -> float:
    return float(f"{a / b:.4g}")  # four significant digits, also for small ratios


def _report(suite: str, params: dict, measured: dict[str, dict], rows: dict[str, int], unit: str,
            ratios: list[tuple[str, str]], extra: dict | None = None) -> dict:
    variants = {}
    for name, row in measured.items():
        variants[name] = {
            "throughput": round(rows[name] / row["seconds"], 1),
            "unit": unit,
            "seconds": round(row["seconds"], 4),
            "all_seconds": [round(s, 4) for s in row["all_seconds"]],
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
        "ratios": {f"{a}/{b}": _ratio(variants[a]["throughput"], variants[b]["throughput"]) for a, b in ratios},
    }
    if extra:
        result.update(extra)
    return result


def format_table(result: dict) -> str:
    lines = [f"tfpipe bench {result['suite']}  {json.dumps(result['params'])}  cpus={result['machine']['cpus']}", ""]
    lines.append(f"  {'variant':<20}{'throughput':>14} {'unit':<7}{'seconds':>9}{'peak RSS MB':>13}")
    for name, row in result["variants"].items():
        lines.append(f"  {name:<20}{row['throughput']:>14,.0f} {row['unit']:<7}{row['seconds']:>9.3f}"
                     f"{row['peak_rss_mb']:>13.0f}")
    lines.append("")
    for name, ratio in result["ratios"].items():
        lines.append(f"  {name:<40}{ratio:>8.2f}x")
    for key in ("latency_ratios", "gzip_size_ratios", "stages", "skipped", "rejected", "checks", "targets"):
        if result.get(key):
            lines += ["", f"  {key}:"] + [f"    {k}: {v}" for k, v in result[key].items()]
    if "report" in result:  # a suite's own table (optimize: the optimization report)
        lines += ["", *(f"  {line}" for line in result["report"].splitlines())]
    return "\n".join(lines)


# --- ingest ----------------------------------------------------------------------------------

def _per_row_reference(source: Path, data_format: str, out: Path, level: int) -> int:
    """The ExampleGen way: one ``tf.train.Example`` per row, built in Python."""
    import pandas as pd
    import tensorflow as tf

    frame = pd.read_parquet(source) if data_format == "parquet" else pd.read_csv(source)
    options = tf.io.TFRecordOptions(compression_type="GZIP", compression_level=level)
    columns = list(frame.columns)
    writers = [tf.io.TFRecordWriter(str(out / f"{s}.tfrecord.gz"), options) for s in ("train", "eval")]
    count = 0
    try:
        for row in frame.itertuples(index=False):
            example = tf.train.Example()
            for name, value in zip(columns, row):
                if value is None or (isinstance(value, float) and np.isnan(value)):
                    continue
                feature = example.features.feature[name]
                if isinstance(value, str):
                    feature.bytes_list.value.append(value.encode("utf-8"))
                elif isinstance(value, (int, np.integer, bool, np.bool_)):
                    feature.int64_list.value.append(int(value))
                else:
                    feature.float_list.value.append(float(value))
            record = example.SerializeToString()
            writers[0 if zlib.crc32(record) % 10 < 8 else 1].write(record)
            count += 1
    finally:
        for writer in writers:
            writer.close()
    return count


def _read_floor(source: Path, data_format: str) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pq.read_table(source) if data_format == "parquet" else pacsv.read_csv(source)
    return table.num_rows


def _raw_records(examples: Path) -> list[bytes]:
    """Our shards, decompressed: the serialized records (with their TFRecord frames)."""
    import gzip

    return [gzip.decompress(path.read_bytes()) for path in sorted(examples.rglob("*.tfrecord.gz"))]


def _compress_floor(chunks: list[bytes], level: int, workers: int) -> int:
    piece = 8 << 20
    # Views, not slices: copying the pieces took 0.19 s of a 0.46 s floor for 1M rows here.
    pieces = [memoryview(chunk)[i:i + piece] for chunk in chunks for i in range(0, len(chunk), piece)]

    from tasks.coders import gzip_compressor

    def compress(data: bytes) -> int:
        compressor = gzip_compressor(level)
        return len(compressor.compress(data) + compressor.flush())

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(compress, pieces))


def _decoded(files: list[str]) -> Any:
    import pandas as pd

    from tasks.validate import iter_record_batches

    frames = [b.to_pandas() for b in iter_record_batches(files)]
    frame = pd.concat(frames, ignore_index=True)
    frame = frame.applymap(lambda v: None if v is None else (v[0].decode() if isinstance(v[0], bytes) else v[0]))
    return frame.sort_values(sorted(frame.columns), na_position="first").reset_index(drop=True)


@dataclass(frozen=True)
class PreparedExamples:
    """Generated data taken through ingest and validation, ready to train on."""

    uri: str
    spec: Any  # tasks.model.ModelSpec
    counts: dict[str, int]
    files: dict[str, list[str]]


def prepare_examples(root: Path, rows: int, columns: int = 20, task: str = "binary", num_shards: int = 4,
                     hidden_units: tuple[int, ...] = (32, 16), seed: int = 1) -> PreparedExamples:
    """``tfpipe datagen`` data, ingested and validated by the pipeline's own steps, and its model spec."""
    from tasks.config import config_from_mapping
    from tasks.datagen import generate
    from tasks.ingest import ingest_examples, read_manifest, split_files
    from tasks.model import model_spec_from
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
    manifest = read_manifest(examples.uri)
    local = Path(examples.uri)
    return PreparedExamples(examples.uri, spec, dict(examples.counts),
                            {split: split_files(local, manifest, split) for split in manifest["splits"]})


def bench_ingest(rows: int, columns: int = 20, repeat: int = 3, data_format: str = "parquet",
                 workdir: Path | None = None) -> dict:
    from tasks.config import config_from_mapping
    from tasks.datagen import generate
    from tasks.ingest import ingest_examples

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        suffix = "parquet" if data_format == "parquet" else "csv"
        source, small = root / f"data.{suffix}", root / f"small.{suffix}"
        generate(source, rows, columns=columns, seed=1)
        generate(small, min(rows, 5000), columns=columns, seed=2)
        config = config_from_mapping(
            {"name": "bench", "data": {"source": [str(source)], "num_shards": 4}, "label": "label", "task": "binary"},
            "bench",
        )
        level = config.data.compression_level
        workers = usable_cpus()

        def ours(path=source):
            out = root / "ours"
            result = ingest_examples(config, [str(path)], str(out), root / "work")
            return result.rows

        def reference(path=source):
            out = root / "reference"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            return _per_row_reference(path, data_format, out, level)

        # warm-up on small data, and the same-work check: identical examples, row for row
        assert ours(small) == reference(small) == min(rows, 5000)
        mine = _decoded([str(p) for p in sorted((root / "ours").rglob("*.tfrecord.gz"))])
        theirs = _decoded([str(p) for p in sorted((root / "reference").glob("*.tfrecord.gz"))])
        import pandas as pd

        pd.testing.assert_frame_equal(mine[sorted(mine.columns)], theirs[sorted(mine.columns)], check_dtype=False,
                                      rtol=1e-6)
        ours()
        chunks = _raw_records(root / "ours")

        def floor_compress():
            _compress_floor(chunks, level, workers)
            return rows

        measured = run_variants(
            {
                "ours": ours,
                "per_row_reference": reference,
                "floor_read": lambda: _read_floor(source, data_format),
                "floor_compress": floor_compress,
            },
            repeat,
        )
        assert measured["ours"]["result"] == measured["per_row_reference"]["result"] == rows
        read, squeeze = measured.pop("floor_read"), measured.pop("floor_compress")
        slowest = max((read, squeeze), key=lambda m: m["seconds"])
        measured["floor"] = slowest
        raw_mb = sum(len(c) for c in chunks) / 1e6
        result = _report(
            "ingest", {"rows": rows, "columns": columns, "format": data_format, "gzip_level": level,
                       "repeat": repeat},
            measured, {name: rows for name in measured}, "rows/s",
            [("ours", "per_row_reference"), ("ours", "floor")],
            extra={
                "stages": {
                    "read_seconds": round(read["seconds"], 4),
                    "compress_seconds": round(squeeze["seconds"], 4),
                    "floor_is": "read" if slowest is read else "compress",
                    "serialized_mb": round(raw_mb, 1),
                    "compressed_mb": round(sum(p.stat().st_size for p in (root / "ours").rglob("*.gz")) / 1e6, 1),
                    "source_mb": round(source.stat().st_size / 1e6, 1),
                },
                "checks": {"same_examples_on_warmup": True, "rows": rows},
            },
        )
        result["targets"] = {
            "ours/per_row_reference >= 10": result["ratios"]["ours/per_row_reference"] >= 10,
            "ours/floor >= 0.5": result["ratios"]["ours/floor"] >= 0.5,
        }
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- validate --------------------------------------------------------------------------------

def _compare_statistics(a, b) -> list[str]:
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


def bench_validate(rows: int, columns: int = 20, repeat: int = 3, workdir: Path | None = None) -> dict:
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    from tasks.config import config_from_mapping
    from tasks.datagen import generate
    from tasks.ingest import ingest_examples, read_manifest
    from tasks.validate import compute_statistics, in_memory_statistics

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        source = root / "data.parquet"
        generate(source, rows, columns=columns, seed=1)
        config = config_from_mapping(
            {"name": "bench", "data": {"source": [str(source)], "num_shards": 4}, "label": "label", "task": "binary"},
            "bench",
        )
        examples = root / "examples"
        ingest_examples(config, [str(source)], str(examples), root / "work")
        manifest = read_manifest(str(examples))
        files = [str(examples / rel) for rel in manifest["splits"]["train"]["files"]]
        count = manifest["splits"]["train"]["count"]
        pattern = str(examples / "train" / "*.tfrecord.gz")
        workers = usable_cpus()

        def beam(args: list[str], options=None):
            def run():
                return tfdv.generate_statistics_from_tfrecord(
                    data_location=pattern, output_path=str(root / "beam_stats.tfrecord"),
                    stats_options=options or tfdv.StatsOptions(), pipeline_options=PipelineOptions(args),
                )
            return run

        def floor():
            """Inflating the shards on all cores: what any reader of them must do."""
            from tasks.coders import iter_inflated

            with ThreadPoolExecutor(max_workers=workers) as pool:
                sizes = list(pool.map(lambda f: sum(len(p) for pieces in iter_inflated(f) for p in pieces), files))
            assert sum(sizes) > 0
            return count

        variants = {
            "ours": lambda: compute_statistics(files, root, "auto", columns=manifest["columns"]),
            "tfdv_default": beam([]),
            "beam_all_cores": beam(["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]),
            "in_memory": lambda: in_memory_statistics(files),
            "tfdv_sampled_10pct": beam([], tfdv.StatsOptions(sample_rate=0.1)),
            "floor": floor,
        }
        for fn in variants.values():  # warm-up
            fn()
        measured = run_variants(variants, repeat)
        reference = measured["tfdv_default"]["result"]
        checks = {}
        for name in ("ours", "beam_all_cores", "in_memory", "tfdv_sampled_10pct"):
            problems = _compare_statistics(measured[name]["result"], reference)
            checks[f"{name}_same_as_tfdv_default"] = "identical" if not problems else "; ".join(problems[:4])
        assert checks["ours_same_as_tfdv_default"] == "identical", checks
        result = _report(
            "validate", {"rows": rows, "train_examples": count, "columns": columns, "repeat": repeat},
            measured, {name: count for name in measured}, "rows/s",
            [("ours", "tfdv_default"), ("ours", "beam_all_cores"), ("ours", "in_memory"), ("ours", "floor")],
            extra={"checks": checks},
        )
        result["targets"] = {"ours/tfdv_default >= 10": result["ratios"]["ours/tfdv_default"] >= 10}
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write(result: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
