"""TFDV statistics of TFRecord examples, by one of four engines.

``streaming`` (the default, ``auto``) feeds TFDV's own statistics generators batch by batch from
the TFRecords: a thread per core inflates, parses and accumulates whole shards, and the
shards' accumulators are merged in file order, so memory stays bounded for data larger than RAM
and the result is what ``tfdv.generate_statistics_from_tfrecord`` computes, without a Beam
pipeline. ``in_memory`` reads everything at once (small data, a reference); ``beam`` runs
TFDV's Beam pipeline with the configured options (Flink, Spark, Dataflow). The benchmark
(``tfpipe bench validate``) measures ``streaming`` against TFDV's default.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.settings import usable_cpus

log = logging.getLogger(__name__)

_BATCH = 131072  # rows per record batch: TFDV's generators cost less per row on big batches


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

    # No AutoGraph: the loop is over Python columns, not tensors (converting cost 0.8 s a table).
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def parse(records):
        out = {}
        for name, ragged in tf.io.parse_example(records, spec).items():
            if columns[name] == "string":
                out[name] = (ragged.row_splits, tf.strings.reduce_join(ragged.values), tf.strings.length(ragged.values))
            else:
                out[name] = (ragged.row_splits, ragged.values)
        return out

    return parse



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

    return stats_impl.generate_statistics_in_memory(one_batch(iter_record_batches(files)),
                                                    options or tfdv.StatsOptions())



def one_batch(batches):
    import pyarrow as pa

    tables = [pa.Table.from_batches([b]) for b in batches]
    if not tables:
        return pa.RecordBatch.from_arrays([], [])
    table = pa.concat_tables(tables, promote=True).combine_chunks()
    return pa.RecordBatch.from_arrays([c.chunk(0) if c.num_chunks else c for c in table.columns], table.schema.names)



def beam_statistics(location: str, output: str, beam_args: list[str], options=None):
    """TFDV's statistics as a Beam pipeline, run by the runner ``beam_args`` name.

    ``location`` (a glob of GZIP TFRecord shards) and ``output`` (the statistics file the
    pipeline writes) may be object-store URIs (``s3://``), read and written by the runner's own
    workers through Beam's file systems, so a runner on other machines (Flink, Spark,
    Dataflow) can run it. The result is read back here. This is
    ``tfdv.generate_statistics_from_tfrecord`` without its local-only steps (``tf.io.gfile``,
    which has no ``s3://`` without tensorflow-io). With ``AWS_ENDPOINT_URL`` set and no
    ``--s3_endpoint_url`` given, the pipeline gets that endpoint; credentials are never put in
    the pipeline's options (the runner's workers take them from their own environment).
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_data_validation.utils import stats_util
    from tfx_bsl.public import tfxio

    options = options if options is not None else stats_options()
    args = list(beam_args or [])
    if location.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL") and \
            not any(a.startswith("--s3_endpoint_url") for a in args):
        args.append(f"--s3_endpoint_url={os.environ['AWS_ENDPOINT_URL']}")
    source = tfxio.TFExampleRecord(file_pattern=location, telemetry_descriptors=["tfpipe", "statistics"])
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        _ = (pipeline
             | "ReadExamples" >> source.BeamSource(options.desired_batch_size)
             | "GenerateStatistics" >> tfdv.GenerateStatistics(options)
             | "WriteStatistics" >> tfdv.WriteStatisticsToTFRecord(output))
    if not output.startswith("s3://"):
        return stats_util.load_stats_tfrecord(output)
    from tasks import storage

    with tempfile.TemporaryDirectory(prefix="tfpipe-beam-") as folder:
        local = storage.download_file(output, Path(folder) / "statistics.tfrecord")
        return stats_util.load_stats_tfrecord(str(local))



# Quantile buckets per numeric feature, which the distribution checks read (tasks/anomalies.py).
# TFDV's default, 10, resolves a distribution to 0.1 only; 20 cost nothing more here (1M rows:
# 1.9 s either way), while 50 and 100 cost 0.25 to 0.4 s more.
QUANTILES = 20



def stats_options():
    """TFDV's options with :data:`QUANTILES` quantile buckets."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(num_quantiles_histogram_buckets=QUANTILES)



# Emptied before the interpreter tears modules down: a traced function collected after that
# prints a traceback from its __del__.
atexit.register(_batch_parser.cache_clear)


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
        return beam_statistics(str(Path(files[0]).parent / "*.tfrecord.gz"), str(scratch / "beam_stats.tfrecord"),
                               beam_args or [], options)
    raise ValueError(f"unknown statistics engine {engine!r}")
