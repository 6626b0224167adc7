"""The training input pipeline: GZIP TFRecord shards to ``(features, label)`` batches.

Per epoch: parallel interleave over the shards (each shard read in blocks of records, so
threads hand over blocks, not single records: handing over single records made a parallel
interleave 8x slower than a sequential read here), the decompressed records cached in memory
when they fit, a seeded shuffle, ``batch`` *then* ``tf.io.parse_example`` on the whole batch,
and ``prefetch``; parallelism is autotuned.

An epoch's order depends only on the seed and the epoch number, so a retry that resumes in
the middle of an epoch skips exactly the batches already trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.model import ModelSpec, parse_spec, prepare

READ_BLOCK = 256  # records a reader thread hands over at once
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


def batch_parser(spec: ModelSpec) -> Callable[[Any], Any]:
    """Serialized examples ``[batch]`` to ``(model inputs, target)``."""
    import tensorflow as tf

    parse = parse_spec(spec, with_label=True)
    to_target = label_transform(spec)

    def parse_batch(serialized):
        parsed = tf.io.parse_example(serialized, parse)
        return prepare(spec, parsed), to_target(parsed[spec.label])

    return parse_batch


def should_cache(mode: str, compressed_bytes: int) -> bool:
    """``auto``: cache when the decompressed records fit in a quarter of the free memory."""
    if mode != "auto":
        return mode == "memory"
    import psutil

    return compressed_bytes * INFLATION < CACHE_SHARE_OF_FREE_MEMORY * psutil.virtual_memory().available


@dataclass
class InputPipeline:
    """Builds each epoch's dataset over one shared (and possibly cached) record stream."""

    files: list[str]
    spec: ModelSpec
    batch_size: int
    seed: int
    shuffle_buffer: int = 10_000
    cache: bool = False
    deterministic: bool = False
    num_workers: int = 1

    def __post_init__(self) -> None:
        import tensorflow as tf

        self._parse = batch_parser(self.spec)
        files = tf.data.Dataset.from_tensor_slices(self.files)
        records = files.interleave(
            lambda f: tf.data.TFRecordDataset(f, "GZIP").batch(READ_BLOCK),
            cycle_length=max(1, min(len(self.files), 8)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,  # the cache and every epoch's shuffle start from the same order
        ).unbatch()
        # Cached once, shared by every epoch's dataset built on top of it.
        self._records = records.cache() if self.cache else records

    def options(self):
        import tensorflow as tf

        options = tf.data.Options()
        options.deterministic = self.deterministic
        options.autotune.enabled = True
        # Workers split the shards between them when there are enough, else every worker
        # reads everything and keeps its share of the records.
        policy = tf.data.experimental.AutoShardPolicy
        options.experimental_distribute.auto_shard_policy = (
            policy.FILE if len(self.files) >= self.num_workers else policy.DATA
        )
        return options

    def epoch(self, epoch: int, skip_batches: int = 0):
        """The train batches of ``epoch``, endless (the loop takes a fixed number of steps).

        Repeating keeps every worker in step when file sharding gives one worker a few
        records fewer than another; ``skip_batches`` resumes an epoch part-way.
        """
        import tensorflow as tf

        dataset = self._records.shuffle(
            max(self.shuffle_buffer, self.batch_size), seed=self.seed + epoch, reshuffle_each_iteration=False
        )
        dataset = dataset.batch(self.batch_size, drop_remainder=True).repeat()
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        dataset = dataset.map(self._parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=self.deterministic)
        return dataset.prefetch(tf.data.AUTOTUNE).with_options(self.options())


def eval_dataset(files: list[str], spec: ModelSpec, batch_size: int):
    """Every eval example once, in file order."""
    import tensorflow as tf

    dataset = tf.data.TFRecordDataset(files, "GZIP").batch(batch_size)
    return dataset.map(batch_parser(spec), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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


def floor_dataset(records: list[bytes], spec: ModelSpec, batch_size: int):
    """The floor: batched parsing of records already in memory, nothing else."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(records).batch(batch_size)
    return dataset.map(batch_parser(spec), num_parallel_calls=tf.data.AUTOTUNE)
