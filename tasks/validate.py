"""validate_examples: TFDV statistics, the schema lifecycle, drift and skew, anomalies.

Statistics are computed by TFDV's own statistics generators fed batch by batch from the
TFRecords (the ``streaming`` engine): a thread per core inflates, parses and accumulates
whole shards, and the shards' accumulators are merged in file order, so memory stays bounded
for data larger than RAM and the result is what ``tfdv.generate_statistics_from_tfrecord``
computes, without a Beam pipeline. ``engine: beam`` runs TFDV's Beam pipeline with the configured options instead
(Flink, Spark, Dataflow).

The schema: a curated ``<pipeline>.schema.pbtxt`` beside the pipeline config is
authoritative; without one, the first run whose data passes records an inferred schema and
every later run validates against it. Drift compares the train split with the last run whose
data passed, skew the eval split with the train split. Any anomaly stops the run with a
report that names each feature, the anomaly, and what was expected and observed.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.anomalies import Where, checked_schema, compare, distance_rows, format_report, schema_rows
from tasks.config import ValidateConfig
from tasks.errors import UserError
from tasks.artifacts import Examples, split_files
from tasks.settings import usable_cpus

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.pbtxt"
STATS_FILE = "FeatureStats.pb"
TRAINING = "TRAINING"
SERVING = "SERVING"
_BATCH = 131072  # rows per record batch: TFDV's generators cost less per row on big batches


class DataValidationError(UserError):
    """The examples do not match the schema; ``report`` lists every anomaly."""

    def __init__(self, message: str, report: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ValidationArtifact:
    statistics_uri: str
    schema_uri: str
    anomalies_uri: str
    schema_source: str  # curated, recorded or inferred
    anomalies: int
    baseline_run: str | None = None
    seconds: float = 0.0

    @property
    def schema_inferred(self) -> bool:
        return self.schema_source == "inferred"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema_inferred": self.schema_inferred}


# --- statistics ------------------------------------------------------------------------------

def iter_record_batches(files: list[str], columns: dict[str, str] | None = None,
                        batch_size: int = _BATCH) -> Iterator[Any]:
    """Arrow record batches (one list column per feature, null where absent) of GZIP TFRecords.

    With ``columns`` (name to int, float or string, as the examples manifest records them),
    files are inflated and parsed (``tf.io.parse_example``) on reader threads, a few files
    ahead of the caller and in file order; otherwise tf.data reads them and tfx-bsl's
    ``ExamplesToRecordBatchDecoder`` decodes them on this thread (several times slower here).
    Both give the same batches for the examples ingest writes, which never hold an empty list.
    """
    if columns:
        yield from _parsed_batches(files, columns, batch_size)
        return
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    decoder = example_coder.ExamplesToRecordBatchDecoder()
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(len(files), 4) or 1)
    for records in dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
        yield decoder.DecodeBatch(list(records))


@lru_cache(maxsize=8)
def _batch_parser(columns: tuple[tuple[str, str], ...]):
    """A traced function: serialized examples to, per column, row splits and values (strings
    joined, with their lengths, so no Python object is made per value). Cached: tracing it
    for 20 columns takes about a second."""
    import tensorflow as tf

    columns = dict(columns)
    types = {"int": tf.int64, "float": tf.float32, "string": tf.string}
    spec = {name: tf.io.RaggedFeature(types[kind], row_splits_dtype=tf.int32) for name, kind in columns.items()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(records):
        out = {}
        for name, ragged in tf.io.parse_example(records, spec).items():
            if columns[name] == "string":
                out[name] = (ragged.row_splits, tf.strings.reduce_join(ragged.values), tf.strings.length(ragged.values))
            else:
                out[name] = (ragged.row_splits, ragged.values)
        return out

    return parse


# Emptied before the interpreter tears modules down: a traced function collected after that
# prints a traceback from its __del__.
atexit.register(_batch_parser.cache_clear)


def _to_record_batch(parsed, columns: dict[str, str]):
    """Parsed columns to list arrays; a row without values is null (an absent feature)."""
    import numpy as np
    import pyarrow as pa

    arrays = []
    for name, kind in columns.items():
        offsets = parsed[name][0].numpy()
        if kind == "string":
            lengths = parsed[name][2].numpy()
            starts = np.zeros(len(lengths) + 1, dtype=np.int32)
            np.cumsum(lengths, out=starts[1:])
            data = parsed[name][1].numpy()
            values = pa.BinaryArray.from_buffers(pa.binary(), len(lengths),
                                                 [None, pa.py_buffer(starts), pa.py_buffer(data)])
        else:
            values = pa.array(parsed[name][1].numpy())
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(offsets[1:] == offsets[:-1])))
    return pa.RecordBatch.from_arrays(arrays, list(columns))


def _file_batches(path: str, parse, columns: dict[str, str], batch_size: int) -> Iterator[Any]:
    """The record batches of one GZIP TFRecord file, ``batch_size`` rows each but the last."""
    import tensorflow as tf

    from tasks.coders import iter_gzip_tfrecords

    pending: list[bytes] = []
    for records in iter_gzip_tfrecords(path):
        pending.extend(records)
        while len(pending) >= batch_size:
            yield _to_record_batch(parse(tf.constant(pending[:batch_size])), columns)
            pending = pending[batch_size:]
    if pending:
        yield _to_record_batch(parse(tf.constant(pending)), columns)


def _shards_on_threads(count: int, handle: Callable[[int], None], stop: Any) -> list[Any]:
    """Started threads, one per usable core (at most ``count``): each takes the next shard index
    not yet taken and calls ``handle`` with it, until none is left or ``stop`` (an Event) is set."""
    import threading

    claimed, lock = iter(range(count)), threading.Lock()

    def run() -> None:
        while not stop.is_set():
            with lock:
                i = next(claimed, None)
            if i is None:
                return
            handle(i)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(min(count, usable_cpus()))]
    for thread in threads:
        thread.start()
    return threads


def _parsed_batches(files: list[str], columns: dict[str, str], batch_size: int) -> Iterator[Any]:
    import queue
    import threading

    parse = _batch_parser(tuple(columns.items()))
    queues = [queue.Queue(maxsize=2) for _ in files]  # memory: a few batches per file being read
    stop, end = threading.Event(), object()

    def put(i: int, item) -> None:
        while not stop.is_set():
            try:
                queues[i].put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(i: int) -> None:
        try:
            for batch in _file_batches(files[i], parse, columns, batch_size):
                put(i, batch)
            put(i, end)
        except BaseException as error:  # noqa: BLE001 - raised on the consumer's thread
            put(i, error)

    _shards_on_threads(len(files), read, stop)
    try:
        for i in range(len(files)):  # file order, whatever order the readers finish in
            while (item := queues[i].get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        stop.set()


def _generators(options=None):
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    return stats_impl.get_generators(options or tfdv.StatsOptions(), in_memory=True)


def _accumulate(generators, batches, accumulators=None):
    accumulators = accumulators or [g.create_accumulator() for g in generators]
    for count, batch in enumerate(batches, 1):
        accumulators = [g.add_input(a, batch) for g, a in zip(generators, accumulators)]
        if count % 64 == 0:
            accumulators = [g.compact(a) for g, a in zip(generators, accumulators)]
    return accumulators


def streaming_statistics(batches, options=None):
    """TFDV statistics of a stream of record batches, through TFDV's in-memory generators."""
    from tensorflow_data_validation.statistics import stats_impl

    generators = _generators(options)
    return stats_impl.extract_statistics_output(_accumulate(generators, batches), generators)


def sharded_statistics(files: list[str], columns: dict[str, str], options=None, batch_size: int = _BATCH):
    """TFDV statistics of GZIP TFRecord shards, one shard at a time per core.

    Each worker thread inflates, parses and accumulates whole shards with TFDV's in-memory
    generators (one accumulator set per shard). A finished shard's set is folded into the
    running total as soon as every shard before it has been, so the sets are merged in file
    order (the result does not depend on which thread read what) and memory holds one batch
    per thread and only the sets of shards finished ahead of a slower one.
    """
    import threading

    from tensorflow_data_validation.statistics import stats_impl

    generators = _generators(options)
    parse = _batch_parser(tuple(columns.items()))
    finished: dict[int, Any] = {}
    state = {"next": 0, "total": [g.create_accumulator() for g in generators]}
    errors: list[BaseException] = []
    lock, failed = threading.Lock(), threading.Event()

    def work(i: int) -> None:
        try:
            accumulators = _accumulate(generators, _file_batches(files[i], parse, columns, batch_size))
        except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
            errors.append(error)
            failed.set()
            return
        with lock:  # fold every shard that is now next in file order
            finished[i] = accumulators
            while state["next"] in finished:
                shard = finished.pop(state["next"])
                state["total"] = [g.compact(g.merge_accumulators([t, a]))
                                  for g, t, a in zip(generators, state["total"], shard)]
                state["next"] += 1

    for thread in _shards_on_threads(len(files), work, failed):
        thread.join()
    if errors:
        raise errors[0]
    return stats_impl.extract_statistics_output(state["total"], generators)


def in_memory_statistics(files: list[str], options=None):
    """Every record decoded into one batch, then TFDV's in-memory path (needs the data to fit)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    return stats_impl.generate_statistics_in_memory(_one_batch(iter_record_batches(files)),
                                                    options or tfdv.StatsOptions())


def _one_batch(batches):
    import pyarrow as pa

    tables = [pa.Table.from_batches([b]) for b in batches]
    if not tables:
        return pa.RecordBatch.from_arrays([], [])
    table = pa.concat_tables(tables, promote=True).combine_chunks()
    return pa.RecordBatch.from_arrays([c.chunk(0) if c.num_chunks else c for c in table.columns], table.schema.names)


def beam_statistics(files: list[str], beam_args: list[str], scratch: Path, options=None):
    """``tfdv.generate_statistics_from_tfrecord`` with the given Beam pipeline options."""
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    pattern = str(Path(files[0]).parent / "*.tfrecord.gz")
    return tfdv.generate_statistics_from_tfrecord(
        data_location=pattern,
        output_path=str(scratch / "beam_stats.tfrecord"),
        pipeline_options=PipelineOptions(beam_args or []),
        **({"stats_options": options} if options is not None else {}),
    )


# Quantile buckets per numeric feature, which the distribution checks read (tasks/anomalies.py).
# TFDV's default, 10, resolves a distribution to 0.1 only; 20 cost nothing more here (1M rows:
# 1.9 s either way), while 50 and 100 cost 0.25 to 0.4 s more.
QUANTILES = 20


def stats_options():
    """TFDV's options with :data:`QUANTILES` quantile buckets."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(num_quantiles_histogram_buckets=QUANTILES)


def compute_statistics(files: list[str], scratch: Path, engine: str = "auto", beam_args: list[str] | None = None,
                       columns: dict[str, str] | None = None):
    options = stats_options()
    if engine in ("auto", "streaming"):
        if columns:
            return sharded_statistics(files, columns, options)
        return streaming_statistics(iter_record_batches(files), options)
    if engine == "in_memory":
        return in_memory_statistics(files, options)
    if engine == "beam":
        return beam_statistics(files, beam_args or [], scratch, options)
    raise ValueError(f"unknown statistics engine {engine!r}")


# --- schema ----------------------------------------------------------------------------------

def infer_schema(train_statistics, label: str):
    """Infer a schema with a label-free ``SERVING`` environment (what a served model receives)."""
    import tensorflow_data_validation as tfdv

    # No inferred shape: a column present in every train example would then be required in
    # every later example, and one missing value (which the model imputes) would stop a run.
    schema = tfdv.infer_schema(train_statistics, infer_feature_shape=False)
    return ensure_environments(schema, label)


def ensure_environments(schema, label: str):
    """``TRAINING`` and ``SERVING`` environments, the label absent from ``SERVING``."""
    import tensorflow_data_validation as tfdv

    for env in (TRAINING, SERVING):
        if env not in schema.default_environment:
            schema.default_environment.append(env)
    try:
        feature = tfdv.get_feature(schema, label)
    except ValueError:
        return schema
    if SERVING not in feature.not_in_environment:
        feature.not_in_environment.append(SERVING)
    return schema


def load_schema_text(text: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(text, schema_pb2.Schema())


def schema_text(schema) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(schema)


def column_types(schema) -> dict[str, str]:
    """Column kinds a schema prescribes: INT to int, FLOAT to float, BYTES to string."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    names = {schema_pb2.INT: "int", schema_pb2.FLOAT: "float", schema_pb2.BYTES: "string"}
    return {f.name: names[f.type] for f in schema.feature if f.type in names}


OVERVIEW_FILE = "overview.html"


def statistics_html(statistics, baseline=None) -> str | None:
    """TFDV's statistics visualization (Facets) as a standalone HTML page."""
    try:
        from tensorflow_data_validation.utils import display_util
    except ImportError:  # pragma: no cover - visualization extras missing
        return None
    if baseline is not None:
        return display_util.get_statistics_html(statistics, baseline, lhs_name="this run", rhs_name="baseline")
    return display_util.get_statistics_html(statistics)


def statistics_overview_html(statistics, title: str) -> str:
    """The statistics as one self-contained HTML page (no script, nothing fetched): a row per
    feature with its counts, its distribution as an inline SVG histogram or its top values.

    TFDV's Facets page loads its components from the internet; this one opens anywhere,
    the MLflow UI's artifact preview on an offline machine included.
    """
    import html

    dataset = statistics.datasets[0]
    total = max(int(dataset.num_examples), 1)

    def bars(heights: list[float], labels: list[str]) -> str:
        top = max(heights, default=0.0) or 1.0  # a split where a column has no value at all
        width = 180 / max(len(heights), 1)
        rects = "".join(
            f'<rect x="{i * width:.1f}" y="{40 - 38 * h / top:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{38 * h / top:.1f}"><title>{html.escape(label)}: {h:g}</title></rect>'
            for i, (h, label) in enumerate(zip(heights, labels)))
        return f'<svg width="180" height="40" role="img">{rects}</svg>'

    rows = []
    for feature in dataset.features:
        name = html.escape(".".join(feature.path.step) or feature.name)
        kind = feature.WhichOneof("stats")
        if kind == "num_stats":
            stats = feature.num_stats
            common = stats.common_stats
            buckets = [b for h in stats.histograms if h.type == h.STANDARD for b in h.buckets][:30]
            chart = bars([b.sample_count for b in buckets], [f"{b.low_value:.4g} to {b.high_value:.4g}" for b in buckets])
            summary = (f"mean {stats.mean:.4g}, std {stats.std_dev:.4g}, min {stats.min:.4g}, median "
                       f"{stats.median:.4g}, max {stats.max:.4g}, zeros {int(stats.num_zeros)}")
        elif kind == "string_stats":
            stats = feature.string_stats
            common = stats.common_stats
            top = list(stats.top_values)[:10]
            chart = bars([t.frequency for t in top], [t.value for t in top])
            summary = f"{int(stats.unique)} unique; top: " + ", ".join(
                f"{html.escape(t.value)} ({int(t.frequency)})" for t in top[:5])
        else:
            continue
        missing = int(common.num_missing)
        type_name = feature.Type.Name(feature.type).lower()  # int, float, string, bytes, struct
        rows.append(f"<tr><td class=name>{name}</td><td>{html.escape(type_name)}</td>"
                    f"<td>{int(common.num_non_missing)}</td><td>{missing} ({100 * missing / total:.1f}%)</td>"
                    f"<td>{chart}</td><td>{summary}</td></tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;font-size:13px;vertical-align:middle}}
.name{{font-weight:bold}}rect{{fill:#4e79a7}}</style></head>
<body><h2>{html.escape(title)}</h2><p>{int(dataset.num_examples)} examples, {len(rows)} features
(TFDV statistics).</p>
<table><tr><th>feature</th><th>type</th><th>present</th><th>missing</th><th>distribution</th><th>summary</th></tr>
{"".join(rows)}
</table></body></html>
"""


# --- the step --------------------------------------------------------------------------------

def validate_examples(
    examples_uri: str,
    statistics_uri: str,
    anomalies_uri: str,
    recorded_schema_uri: str,
    label: str,
    cache_dir: Path,
    work_dir: Path,
    config: ValidateConfig | None = None,
    curated_schema: Path | None = None,
    baseline_uri: str | None = None,
    run_id: str = "",
    pipeline: str = "",
) -> ValidationArtifact:
    """Compute statistics per split, settle the schema and check every split (tasks/anomalies.py).

    Args:
        curated_schema: A checked-in schema; authoritative when it exists.
        baseline_uri: Pointer (JSON) to the statistics of the last run that passed validation
            and training (:func:`record_passing_run` sets it once training has succeeded).
        pipeline: The pipeline's name, for the hints of the report.

    The statistics, the schema used and the anomalies are published even when validation
    fails, so the report can be read; the exception stops everything downstream. Nothing is
    recorded here: a run that fails later (in training) must not leave its schema behind.

    Raises:
        DataValidationError: Some split has anomalies against the schema, or a distribution moved.
    """
    config = config or ValidateConfig()
    started = time.perf_counter()
    examples = Examples.open(examples_uri)
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="validate-"))
    try:
        stats_dir, anomalies_dir = scratch / "statistics", scratch / "anomalies"
        baseline = _read_baseline(baseline_uri, run_id, cache_dir)
        statistics = _split_statistics(examples, cache_dir, scratch, config, baseline, stats_dir)
        source, schema = _schema_in_force(statistics["train"], label, curated_schema, recorded_schema_uri)
        (stats_dir / SCHEMA_FILE).write_text(schema_text(schema))
        where = Where(pipeline, source, str(curated_schema or ""))
        report = _check(statistics, schema, where, config, baseline)
        anomalies_dir.mkdir(parents=True)
        (anomalies_dir / "report.json").write_text(json.dumps(report, indent=2))
        (anomalies_dir / "report.txt").write_text(format_report(report) + "\n")
        storage.publish_dir(stats_dir, statistics_uri)
        storage.publish_dir(anomalies_dir, anomalies_uri)
        if report:
            raise DataValidationError(
                f"{len(report)} anomal{'y' if len(report) == 1 else 'ies'} in {examples_uri} (schema: {source}"
                f"{f' {curated_schema}' if source == 'curated' else ''}):\n{format_report(report)}",
                report,
            )
        return ValidationArtifact(
            statistics_uri=statistics_uri,
            schema_uri=storage.join(statistics_uri, SCHEMA_FILE),
            anomalies_uri=anomalies_uri,
            schema_source=source,
            anomalies=0,
            baseline_run=baseline[0] if baseline else None,
            seconds=round(time.perf_counter() - started, 3),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _split_statistics(examples: Examples, cache_dir: Path, scratch: Path, config: ValidateConfig, baseline,
                      stats_dir: Path) -> dict[str, Any]:
    """Each split's statistics, written with its two pages into ``stats_dir``."""
    statistics = {}
    for split in examples.splits:
        started = time.perf_counter()
        statistics[split] = compute_statistics(examples.files(split, cache_dir), scratch, config.engine,
                                               config.beam_pipeline_args, examples.columns)
        log.info("statistics of %s (%d examples) in %.2fs", split, examples.count(split),
                 time.perf_counter() - started)
        (stats_dir / split).mkdir(parents=True)
        (stats_dir / split / STATS_FILE).write_bytes(statistics[split].SerializeToString())
        html = statistics_html(statistics[split], baseline[1].get(split) if baseline else None)
        if html:
            (stats_dir / split / "statistics.html").write_text(html, encoding="utf-8")
        (stats_dir / split / OVERVIEW_FILE).write_text(
            statistics_overview_html(statistics[split], f"Statistics of the {split} split"), encoding="utf-8")
    return statistics


def _schema_in_force(train_statistics, label: str, curated: Path | None, recorded_uri: str):
    """(source, schema): the curated schema, else the recorded one, else one inferred from train."""
    if curated is not None and curated.is_file():
        try:
            return "curated", ensure_environments(load_schema_text(curated.read_text(encoding="utf-8")), label)
        except Exception as error:  # noqa: BLE001 - a broken curated schema is a config error
            raise ValueError(f"curated schema {curated} cannot be parsed: {error}") from None
    if storage.exists(recorded_uri):
        return "recorded", load_schema_text(storage.read_bytes(recorded_uri).decode("utf-8"))
    return "inferred", infer_schema(train_statistics, label)


def _check(statistics: dict[str, Any], schema, where: Where, config: ValidateConfig, baseline) -> list[dict]:
    """Every split against the schema, eval against train, train against the last passing run."""
    import tensorflow_data_validation as tfdv

    report: list[dict[str, str]] = []
    previous = baseline[1].get("train") if baseline else None
    for split, stats in statistics.items():
        checked = checked_schema(schema, where.schema_source, config, statistics["train"],
                                 stats.datasets[0].num_examples)
        kwargs: dict[str, Any] = {}
        if split == "train" and previous is not None:
            kwargs["previous_statistics"] = previous
        if split == "train" and "eval" in statistics:
            kwargs["serving_statistics"] = statistics["eval"]
        anomalies = tfdv.validate_statistics(stats, checked, environment=TRAINING, **kwargs)
        report.extend(schema_rows(split, anomalies, checked, stats, where, config))
    for split, stats in statistics.items():
        if split != "train":
            report.extend(distance_rows(split, f"{split} against train", "validation.skew",
                                        compare(stats, statistics["train"], config.skew, config.significance)))
    if previous is not None:
        report.extend(distance_rows("train", f"train against the train split of run {baseline[0]}",
                                    "validation.drift",
                                    compare(statistics["train"], previous, config.drift, config.significance)))
    return report


def record_passing_run(statistics_uri: str, schema_source: str, recorded_schema_uri: str, baseline_uri: str | None,
                       run_id: str) -> bool:
    """After a run passed validation *and* training: record its inferred schema (enforced from
    then on) and make its statistics the baseline of the next run's drift check. Returns
    whether a schema was recorded."""
    recorded = False
    if schema_source == "inferred" and not storage.exists(recorded_schema_uri):
        storage.write_bytes(recorded_schema_uri, storage.read_bytes(storage.join(statistics_uri, SCHEMA_FILE)))
        recorded = True
    if baseline_uri:
        storage.write_bytes(baseline_uri, json.dumps({"run_id": run_id, "statistics_uri": statistics_uri}).encode())
    return recorded


def reset_recorded(recorded_schema_uri: str, baseline_uri: str) -> list[str]:
    """Discard the recorded schema and the drift baseline (``tfpipe schema NAME --reset``)."""
    removed = []
    for uri in (recorded_schema_uri, baseline_uri):
        if storage.exists(uri):
            storage.delete_file(uri)
            removed.append(uri)
    return removed


def _read_baseline(baseline_uri: str | None, run_id: str, cache_dir: Path):
    """(run id, split -> statistics) of the last run whose data passed, if any and not this run."""
    if not baseline_uri or not storage.exists(baseline_uri):
        return None
    pointer = json.loads(storage.read_bytes(baseline_uri))
    if pointer.get("run_id") == run_id:
        return None  # a retry of the run that set it: compare with nothing rather than itself
    try:
        local = storage.materialize(pointer["statistics_uri"], cache_dir)
    except storage.ArtifactNotFoundError:
        log.warning("baseline statistics %s are gone; drift is not checked", pointer["statistics_uri"])
        return None
    from tensorflow_metadata.proto.v0 import statistics_pb2

    splits = {}
    for split_dir in local.iterdir():
        if (split_dir / STATS_FILE).is_file():
            splits[split_dir.name] = statistics_pb2.DatasetFeatureStatisticsList.FromString(
                (split_dir / STATS_FILE).read_bytes()
            )
    return pointer.get("run_id"), splits


def load_statistics(statistics_uri: str, split: str, cache_dir: Path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    local = storage.materialize(statistics_uri, cache_dir)
    return statistics_pb2.DatasetFeatureStatisticsList.FromString((local / split / STATS_FILE).read_bytes())


def load_schema(statistics_uri: str, cache_dir: Path):
    local = storage.materialize(statistics_uri, cache_dir)
    return load_schema_text((local / SCHEMA_FILE).read_text())


def read_split_record_batch(local_examples: Path, manifest: dict[str, Any], split: str):
    """All examples of a split decoded into one Arrow record batch (tests and small data)."""
    return _one_batch(iter_record_batches(split_files(local_examples, manifest, split), manifest["columns"]))
