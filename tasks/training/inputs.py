"""The training input pipeline: GZIP TFRecord shards to ``(features, label)`` batches.

Per epoch: parallel interleave over the shards, each read in blocks of records (threads
hand over blocks: handing over single records made a parallel interleave 8x slower than a
sequential read here); the decompressed blocks cached in memory when they fit; a seeded
shuffle of blocks, then of records within windows of blocks; ``batch`` *then*
``tf.io.parse_example`` on the whole batch; ``prefetch``; parallelism and prefetch autotuned,
or with ``autotune=False`` every parallel stage on every usable core and the autotuner off
(see ``data_options``). No tf.data
op runs per record: per-record ops (unbatch, a record shuffle buffer) cost as much as parsing.

An epoch's order depends only on the seed and the epoch number, so a retry that resumes in
the middle of an epoch skips exactly the batches already trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.training.model import ModelSpec, parse_spec, prepare
from tasks.settings import usable_cpus

# Records a reader thread hands over at once, and parsed at once: the first epoch takes about
# 2.0 s for 800k examples in blocks of 1024 here, against 2.2 to 2.8 s in blocks of 256 (parsing
# has a cost per call); 2048 and 4096 gain nothing more.
READ_BLOCK = 1024
# Batches made ready ahead of the training step when the autotuner is off.
PREFETCH = 4
CACHE_SHARE_OF_FREE_MEMORY = 0.25
# Decompressed TFRecords are about this many times their GZIP size (level 1, tabular data).
INFLATION = 4.0


def label_transform(spec: ModelSpec) -> Callable[[Any], Any]:
    """Raw label tensor ``[batch, 1]`` to the training target."""
    import tensorflow as tf

    if spec.task == "regression":
        return lambda y: tf.cast(tf.squeeze(y, -1), tf.float32)
    if spec.label_vocabulary:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(spec.label_vocabulary)), tf.range(len(spec.label_vocabulary), dtype=tf.int64)
            ),
            default_value=-1,
        )
        return lambda y: table.lookup(tf.squeeze(y, -1))
    return lambda y: tf.cast(tf.squeeze(y, -1), tf.int64)


def graph_only(function: Callable[..., Any]) -> Callable[..., Any]:
    """A tf.data function that tf.data traces as it is, without converting it with AutoGraph:
    these functions have no Python control flow on tensors, and converting them (and the
    library code they call) cost about a second per pipeline built (docs/benchmarks.md)."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(function)


def batch_parser(spec: ModelSpec) -> Callable[[Any], Any]:
    """Serialized examples ``[batch]`` to ``(model inputs, target)``."""
    import tensorflow as tf

    parse = parse_spec(spec, with_label=True)
    to_target = label_transform(spec)

    @graph_only
    def parse_batch(serialized):
        parsed = tf.io.parse_example(serialized, parse)
        return prepare(spec, parsed), to_target(parsed[spec.label])

    return parse_batch


def compressed_size(files: list[str]) -> int:
    """Bytes of the (local) GZIP shards, as ``should_cache`` takes them."""
    from pathlib import Path

    return sum(Path(f).stat().st_size for f in files)


def should_cache(mode: str, compressed_bytes: int) -> bool:
    """``auto``: cache when the decompressed records fit in a quarter of the free memory."""
    if mode != "auto":
        return mode == "memory"
    import psutil

    return compressed_bytes * INFLATION < CACHE_SHARE_OF_FREE_MEMORY * psutil.virtual_memory().available


@dataclass
class InputPipeline:
    """Builds each epoch's dataset over one shared (and possibly cached) stream of parsed blocks.

    Under ``multi_worker`` each worker builds its own, with its ``worker_index``: when there are
    at least as many shards as workers each worker reads its own shards (file sharding);
    otherwise every worker reads all of them and keeps its slice of every global batch (data
    sharding), so the global batches are exactly those of one worker.
    """

    files: list[str]
    spec: ModelSpec
    batch_size: int  # global
    seed: int
    shuffle_buffer: int = 10_000
    cache: bool = False
    deterministic: bool = False
    num_workers: int = 1
    worker_index: int = 0
    autotune: bool = True  # False: every parallel stage on every usable core, the autotuner off

    @property
    def shard_files(self) -> bool:
        return self.num_workers > 1 and len(self.files) >= self.num_workers

    def __post_init__(self) -> None:
        import tensorflow as tf

        if self.batch_size % self.num_workers:
            raise ValueError(f"train.batch_size {self.batch_size} must be a multiple of the {self.num_workers} workers")
        self._parse = batch_parser(self.spec)
        self._parallel, self._prefetch = parallelism(self.autotune)
        files = tf.data.Dataset.from_tensor_slices(self.files)
        if self.shard_files:
            files = files.shard(self.num_workers, self.worker_index)
        cycle = max(1, min(-(-len(self.files) // (self.num_workers if self.shard_files else 1)), 8))
        blocks = files.interleave(
            graph_only(lambda f: tf.data.TFRecordDataset(f, "GZIP").batch(READ_BLOCK)),
            cycle_length=cycle,
            num_parallel_calls=self._parallel if self.autotune else min(self._parallel, cycle),
            deterministic=True,  # the cache and every epoch's shuffle start from the same order
        )
        # Parsed a block at a time (batched tf.io.parse_example), in order so that a restarted
        # process rebuilds the same stream; cached parsed when it fits (parsing is the costly
        # map, and parsed numbers are smaller than serialized examples), shared by every epoch.
        parsed = blocks.map(self._parse, num_parallel_calls=self._parallel, deterministic=True)
        self._blocks = parsed.cache() if self.cache else parsed

    def options(self):
        import tensorflow as tf

        options = data_options(self.autotune)
        options.deterministic = self.deterministic
        # Sharding is done above, explicitly (tf.data's auto-sharding cannot see through the
        # shuffle's enumerate): the strategy must not shard again.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return options

    def _worker_batches(self, epoch):
        """One epoch's worker batches, endless (``epoch`` may be a tensor).

        The shuffle works on parsed blocks, never on single records (a tf.data op per record
        cost as much as parsing): blocks are shuffled in a buffer of ``shuffle_buffer`` records,
        ``window`` blocks at a time are merged and permuted with one stateless permutation
        (seeded by seed, epoch and window, so any parallelism gives the same order), then cut
        into batches. Repeating keeps every worker in step when file sharding gives one worker
        a few records fewer than another.
        """
        import tensorflow as tf

        worker_batch = self.batch_size // self.num_workers
        window = max(16, -(-4 * self.batch_size // READ_BLOCK))
        seed = tf.cast(self.seed, tf.int64) + tf.cast(epoch, tf.int64)

        def permute(index, features, target):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(target.flat_values, out_type=tf.int64)[0]), seed=tf.stack([seed, index]))
            return tf.nest.map_structure(lambda t: tf.gather(t.flat_values, order), (features, target))

        dataset = (
            self._blocks.shuffle(max(self.shuffle_buffer // READ_BLOCK, 1), seed=seed, reshuffle_each_iteration=False)
            .ragged_batch(window)
            .enumerate()
            .map(graph_only(lambda index, block: permute(index, *block)), num_parallel_calls=self._parallel,
                 deterministic=True)
        )
        if self.num_workers > 1 and not self.shard_files:
            start = self.worker_index * worker_batch
            dataset = dataset.rebatch(self.batch_size, drop_remainder=True).map(
                graph_only(lambda *batch: tf.nest.map_structure(lambda t: t[start:start + worker_batch], batch)))
        else:
            dataset = dataset.rebatch(worker_batch, drop_remainder=True)
        return dataset.repeat()

    def _finish(self, dataset, replica_batch: int | None):
        worker_batch = self.batch_size // self.num_workers
        if replica_batch is not None and replica_batch != worker_batch:
            if worker_batch % replica_batch:
                raise ValueError(f"a worker's batch of {worker_batch} does not split into replica batches of {replica_batch}")
            dataset = dataset.rebatch(replica_batch, drop_remainder=True)
        return dataset.prefetch(self._prefetch).with_options(self.options())

    def epoch(self, epoch: int, skip_batches: int = 0, replica_batch: int | None = None, steps: int | None = None):
        """The batches of ``epoch`` (``replica_batch`` examples each, default: the worker's share
        of the global batch): ``steps`` of them, or endless; ``skip_batches`` (steps) resumes
        part-way."""
        dataset = self._worker_batches(epoch)
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        if steps is not None:
            dataset = dataset.take(max(steps - skip_batches, 0))
        return self._finish(dataset, replica_batch)

    def epochs(self, first: int, last: int, steps: int, skip_batches: int = 0, replica_batch: int | None = None):
        """Epochs ``first`` to ``last - 1``, ``steps`` batches each, as one stream (the first
        resumed after ``skip_batches``): one iterator for a whole training, since creating and
        dropping a distributed iterator cost about a second per epoch here."""
        import tensorflow as tf

        @graph_only
        def one(epoch):
            skip = tf.where(tf.equal(epoch, first), tf.constant(skip_batches, tf.int64), tf.constant(0, tf.int64))
            return self._worker_batches(epoch).skip(skip).take(steps - skip)

        stream = tf.data.Dataset.range(first, last).flat_map(one)
        return self._finish(stream, replica_batch)


def eval_dataset(files: list[str], spec: ModelSpec, batch_size: int, num_workers: int = 1, worker_index: int = 0,
                 cache: bool = False, autotune: bool = True):
    """Every eval example once, in file order; a worker's share of them when there are several
    (its own shards when there are enough, else every ``num_workers``-th batch). With ``cache``
    the parsed batches are kept in memory after the first pass, so later epochs' evaluations
    neither inflate nor parse again. ``autotune`` as in ``InputPipeline``."""
    import tensorflow as tf

    if num_workers > 1 and len(files) >= num_workers:
        dataset = tf.data.TFRecordDataset(files[worker_index::num_workers], "GZIP").batch(batch_size)
    else:
        dataset = tf.data.TFRecordDataset(files, "GZIP").batch(batch_size)
        if num_workers > 1:
            dataset = dataset.shard(num_workers, worker_index)
    parallel, prefetch = parallelism(autotune)
    dataset = dataset.map(batch_parser(spec), num_parallel_calls=parallel)
    return (dataset.cache() if cache else dataset).prefetch(prefetch).with_options(data_options(autotune))


def example_frame(files: list[str], spec: ModelSpec, rows: int = 5):
    """The first ``rows`` examples as a DataFrame of raw feature values (None where missing)."""
    import pandas as pd
    import tensorflow as tf

    from tasks.coders import iter_gzip_tfrecords

    records: list[bytes] = []
    for path in files:
        for chunk in iter_gzip_tfrecords(path):
            records += chunk[: rows - len(records)]
            if len(records) >= rows:
                break
        if len(records) >= rows:
            break
    data: dict[str, list] = {f.name: [] for f in spec.features}
    for record in records:
        features = tf.train.Example.FromString(record).features.feature
        for f in spec.features:
            values = features[f.name] if f.name in features else None
            if values is None:
                data[f.name].append(None)
            elif f.kind == "string":
                data[f.name].append(values.bytes_list.value[0].decode() if values.bytes_list.value else None)
            elif f.kind == "int":
                data[f.name].append(int(values.int64_list.value[0]) if values.int64_list.value else None)
            else:
                data[f.name].append(float(values.float_list.value[0]) if values.float_list.value else None)
    frame = pd.DataFrame(data)
    for f in spec.features:  # numbers as float64, so a column with missing values (NaN) still fits
        frame[f.name] = frame[f.name].astype(object if f.categorical else "float64")
    return frame


def naive_dataset(files: list[str], spec: ModelSpec, batch_size: int):
    """The pipeline of most tutorials: parse one example at a time, batch, no prefetch."""
    import tensorflow as tf

    parse = parse_spec(spec, with_label=True)
    to_target = label_transform(spec)

    def parse_one(record):
        parsed = tf.io.parse_single_example(record, parse)
        return parsed, parsed[spec.label]

    def finish(parsed, label):
        return prepare(spec, parsed), to_target(label)

    dataset = tf.data.TFRecordDataset(files, "GZIP").map(parse_one).batch(batch_size)
    return dataset.map(finish)


def in_memory_batches(records: list[bytes], batch_size: int):
    """Serialized records already batched and held in memory (iterate once to fill the cache)."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(records).batch(batch_size, drop_remainder=True).cache()


def parallelism(autotune: bool) -> tuple[int, int]:
    """A pipeline's ``num_parallel_calls`` and prefetch buffer: both ``tf.data.AUTOTUNE``, or every
    usable core and ``PREFETCH`` batches (with ``data_options(False)``)."""
    import tensorflow as tf

    return (tf.data.AUTOTUNE, tf.data.AUTOTUNE) if autotune else (usable_cpus(), PREFETCH)


def data_options(autotune: bool):
    """tf.data options with the autotuner on or off (off: for pipelines whose parallel stages are
    set to the usable cores). On this project's 2-core machine a pipeline with the autotuner on
    took a fixed extra 0.3 to 0.9 s about one run in three (parsing 800k examples in 0.77 s or
    1.32 s, our first epoch 1.8 s or 2.75 s, a cached epoch 0.45 s or 0.77 s), with every
    autotune algorithm and even with every parallelism fixed; with it off, never."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = autotune
    return options


def floor_dataset(batches, spec: ModelSpec):
    """The floor: ``tf.io.parse_example`` on batches already in memory, nothing else, on every core
    from the start, the autotuner off (a floor must be the best that parsing alone can do)."""
    return batches.map(batch_parser(spec), num_parallel_calls=usable_cpus()).with_options(data_options(False))
