"""``tfpipe bench validate``: TFDV's statistics as tfpipe computes them against TFDV's own ways.

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

import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from tasks.settings import usable_cpus



from tasks.bench.common import compare_statistics, run_variants, suite_report


def bench_validate(rows: int, columns: int = 20, repeat: int = 3, workdir: Path | None = None) -> dict:
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    from tasks.config import config_from_mapping
    from tasks.bench.datagen import generate
    from tasks.ingest import ingest_examples, read_manifest
    from tasks.statistics import compute_statistics, in_memory_statistics

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
            problems = compare_statistics(measured[name]["result"], reference)
            checks[f"{name}_same_as_tfdv_default"] = "identical" if not problems else "; ".join(problems[:4])
        assert checks["ours_same_as_tfdv_default"] == "identical", checks
        result = suite_report(
            "validate", {"rows": rows, "train_examples": count, "columns": columns, "repeat": repeat},
            measured, {name: count for name in measured}, "rows/s",
            [("ours", "tfdv_default"), ("ours", "beam_all_cores"), ("ours", "in_memory"), ("ours", "floor")],
            extra={"checks": checks},
        )
        result["targets"] = {"ours/tfdv_default >= 10": result["ratios"]["ours/tfdv_default"] >= 10}
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
