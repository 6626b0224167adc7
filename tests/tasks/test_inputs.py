"""The training input pipeline: every example once per epoch, seeded order, exact resume, worker sharding."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks.bench.common import prepare_examples
from tasks.training.inputs import InputPipeline, eval_dataset, floor_dataset, in_memory_batches, naive_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_examples(tmp_path_factory.mktemp("inputs"), 5000, columns=6, task="regression", num_shards=4)


def _labels(dataset, steps):
    return [labels.numpy() for _, labels in dataset.take(steps)]


def _all_train_labels(data, autotune=True):
    return np.concatenate([labels.numpy() for _, labels in eval_dataset(data.files["train"], data.spec, 512,
                                                                         autotune=autotune)])


def test_an_epoch_is_a_permutation_of_the_train_split(data):
    batch = 100
    steps = data.counts["train"] // batch
    pipeline = InputPipeline(data.files["train"], data.spec, batch, seed=3, cache=True)
    seen = np.concatenate(_labels(pipeline.epoch(0), steps))
    everything = _all_train_labels(data)
    assert np.array_equal(everything, _all_train_labels(data, autotune=False))  # file order, untuned too
    assert len(seen) == steps * batch
    # A sub-multiset: nothing is repeated, and only the remainder (< one batch) is left out.
    left = Counter(everything.tolist())
    left.subtract(Counter(seen.tolist()))
    assert min(left.values()) >= 0 and sum(left.values()) == len(everything) - len(seen) < batch
    assert not np.array_equal(seen, everything[: len(seen)])  # shuffled


def test_order_depends_on_seed_and_epoch_only_and_resume_skips_exactly(data):
    batch, steps = 64, data.counts["train"] // 64
    one = InputPipeline(data.files["train"], data.spec, batch, seed=3, cache=True, deterministic=True)
    # A new process, with tf.data's autotuner off and every stage on every core: the same batches.
    other = InputPipeline(data.files["train"], data.spec, batch, seed=3, cache=False, deterministic=True,
                          autotune=False)
    first = _labels(one.epoch(2), steps)
    assert len(first) == steps and all(np.array_equal(a, b) for a, b in zip(first, _labels(other.epoch(2), steps)))
    assert all(np.array_equal(a, b) for a, b in zip(first[7:], _labels(one.epoch(2, skip_batches=7), steps - 7)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(_labels(one.epoch(3), steps)))


def test_workers_split_the_files_or_the_batches(data):
    batch, steps = 100, data.counts["train"] // 100
    # 4 shards, 2 workers: each reads its own 2 shards; together they cover the split once.
    halves = [np.concatenate(_labels(InputPipeline(data.files["train"], data.spec, batch, seed=1,
                                                   num_workers=2, worker_index=i).epoch(0), steps // 2 - 1))
              for i in range(2)]
    assert all(len(h) == (steps // 2 - 1) * 50 for h in halves)
    both = Counter(np.concatenate(halves).tolist())
    assert all(both[v] <= n for v, n in Counter(_all_train_labels(data).tolist()).items())
    # 1 shard, 2 workers: each keeps its half of every global batch.
    one_file = data.files["train"][:1]
    whole = _labels(InputPipeline(one_file, data.spec, batch, seed=1, deterministic=True).epoch(0), 5)
    parts = [_labels(InputPipeline(one_file, data.spec, batch, seed=1, deterministic=True, num_workers=2,
                                   worker_index=i).epoch(0), 5) for i in range(2)]
    for step in range(5):
        assert np.array_equal(np.concatenate([parts[0][step], parts[1][step]]), whole[step])


def test_reference_pipelines_parse_the_same_examples(data):
    from tasks.coders import iter_gzip_tfrecords

    batch = 256
    records = [r for f in data.files["train"] for chunk in iter_gzip_tfrecords(f) for r in chunk]
    naive = np.concatenate([labels.numpy() for _, labels in naive_dataset(data.files["train"], data.spec, batch)])
    floor = np.concatenate([labels.numpy() for _, labels in floor_dataset(in_memory_batches(records, batch), data.spec)])
    everything = _all_train_labels(data)
    assert np.array_equal(naive, everything)
    assert np.array_equal(floor, everything[: len(floor)]) and len(floor) == len(everything) // batch * batch


def test_a_global_batch_must_split_across_workers(data):
    with pytest.raises(ValueError, match="multiple of the 3 workers"):
        InputPipeline(data.files["train"], data.spec, 100, seed=1, num_workers=3)


def test_a_cached_eval_dataset_rereads_nothing_after_its_first_pass(data, tmp_path):
    import shutil

    copies = []
    for path in data.files["eval"]:
        copies.append(str(tmp_path / path.rsplit("/", 1)[-1]))
        shutil.copy(path, copies[-1])
    cached = eval_dataset(copies, data.spec, 256, cache=True)
    first = np.concatenate([labels.numpy() for _, labels in cached])
    expected = np.concatenate([labels.numpy() for _, labels in eval_dataset(data.files["eval"], data.spec, 256)])
    assert len(first) == data.counts["eval"] and np.array_equal(first, expected)
    for path in copies:  # a second pass that read the files would now fail
        Path(path).unlink()
    assert np.array_equal(np.concatenate([labels.numpy() for _, labels in cached]), expected)
