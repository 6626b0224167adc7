"""The vectorized coders against the references: tfx-bsl's encoder and TensorFlow's reader."""

import numpy as np
import pyarrow as pa
import pytest

from tasks.coders import encode_examples, frame_records, varint, varint_lengths


def _batch(n=500, seed=0):
    rng = np.random.default_rng(seed)

    def nulls(k):
        return rng.random(n) < k

    words = np.array(["", "a", "ß", "日本語", "x" * 130, "y" * 20000], dtype=object)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(rng.normal(size=n), mask=nulls(0.2)),
            pa.array(rng.normal(size=n).astype(np.float32)),
            pa.array(rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64), mask=nulls(0.1)),
            pa.array(rng.integers(0, 300, n), pa.int32()),
            pa.array(rng.random(n) < 0.5, mask=nulls(0.3)),
            pa.array(words[rng.integers(0, len(words), n)], pa.string(), mask=nulls(0.25)),
            pa.array([bytes([i % 256, 0, 255]) for i in range(n)], pa.binary()),
            pa.nulls(n, pa.float64()),
            pa.array(rng.integers(0, 5, n)),
        ],
        ["f64", "f32", "i64", "i32", "flag", "text", "raw", "empty", "k" * 200],
    )


def _as_dicts(records):
    import tensorflow as tf

    out = []
    for record in records:
        example = tf.train.Example.FromString(record)
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            if kind is not None:  # tfx-bsl writes a null as a feature without a kind; we omit it
                row[key] = list(getattr(feature, kind).value)
        out.append(row)
    return out


def test_examples_match_tfx_bsl_encoder():
    from tfx_bsl.coders import example_coder

    batch = _batch()

    def as_list(array):
        if pa.types.is_null(array.type):
            array = pa.nulls(len(array), pa.float32())
        elif pa.types.is_floating(array.type):
            array = array.cast(pa.float32())
        elif pa.types.is_boolean(array.type) or pa.types.is_integer(array.type):
            array = array.cast(pa.int64())
        elif pa.types.is_string(array.type):
            array = array.cast(pa.binary())
        offsets = pa.array(np.arange(len(array) + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, array, mask=array.is_null())

    reference = example_coder.RecordBatchToExamplesEncoder().encode(
        pa.RecordBatch.from_arrays([as_list(c) for c in batch.columns], batch.schema.names)
    )
    ours = encode_examples(batch).to_pylist()
    assert len(ours) == len(reference) == batch.num_rows
    assert _as_dicts(ours) == _as_dicts(reference)


def test_decoder_round_trip_restores_the_columns():
    from tfx_bsl.coders import example_coder

    batch = _batch(seed=1)
    decoded = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(encode_examples(batch).to_pylist())
    for name in ("f64", "i64", "text", "flag"):
        column = decoded.column(decoded.schema.get_field_index(name)).to_pylist()
        original = batch.column(batch.schema.get_field_index(name)).to_pylist()
        for got, want in zip(column, original):
            if want is None:
                assert got is None
            elif name == "f64":
                assert got == [pytest.approx(want, rel=1e-6)]
            elif name == "text":
                assert got == [want.encode()]
            else:
                assert got == [int(want)]
    assert "empty" not in decoded.schema.names  # never present


def test_frames_are_byte_identical_to_tensorflow_writer(tmp_path):
    import tensorflow as tf

    records = encode_examples(_batch(300, seed=2))
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records.to_pylist():
            writer.write(record)
    assert frame_records(records).to_pybytes() == path.read_bytes()
    ours = tmp_path / "ours.tfrecord"
    ours.write_bytes(frame_records(records.slice(10, 50)).to_pybytes())
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records.to_pylist()[10:60]


def test_varints_match_protobuf():
    from google.protobuf.internal import encoder

    values = [0, 1, 127, 128, 300, 2**32, 2**63 - 1, 2**64 - 1]
    for value in values:
        expected = encoder._VarintBytes(value)
        assert varint(value) == expected
    assert varint_lengths(np.array(values, dtype=np.uint64)).tolist() == [len(varint(v)) for v in values]


def test_encode_tfrecords_is_framing_of_the_encoded_examples():
    from tasks.coders import encode_tfrecords

    batch = _batch(400, seed=3)
    assert encode_tfrecords(batch).to_pybytes() == frame_records(encode_examples(batch)).to_pybytes()
    assert encode_tfrecords(batch.slice(0, 0)).to_pybytes() == b""


def test_gzip_reader_matches_tensorflow_and_rejects_truncation(tmp_path):
    import zlib

    import tensorflow as tf

    from tasks.coders import iter_gzip_tfrecords

    records = encode_examples(_batch(3000, seed=4))
    path = tmp_path / "multi.tfrecord.gz"
    with path.open("wb") as handle:  # two gzip members, as ingest writes one per batch
        for part in (records.slice(0, 1000), records.slice(1000)):
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            handle.write(compressor.compress(frame_records(part)) + compressor.flush())
    ours = [r for chunk in iter_gzip_tfrecords(str(path), chunk_bytes=4096) for r in chunk]
    theirs = [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]
    assert ours == theirs == records.to_pylist()
    truncated = tmp_path / "truncated.tfrecord.gz"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated.tfrecord.gz"):
        list(iter_gzip_tfrecords(str(truncated)))
    corrupt = tmp_path / "corrupt.tfrecord.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 64] = bytes(64)  # zeroes in the middle of the first member
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt.tfrecord.gz: corrupt GZIP data"):
        list(iter_gzip_tfrecords(str(corrupt)))


@pytest.mark.parametrize("chunk_bytes", [7, 1000, 1 << 20])
def test_gzip_reader_frames_records_cut_anywhere(tmp_path, chunk_bytes):
    """Records longer than a read chunk, empty records and gzip members that end mid-record
    come back whole and in order, whatever the chunk size."""
    import zlib

    import tensorflow as tf

    from tasks.coders import iter_gzip_tfrecords

    rng = np.random.default_rng(7)
    records = [rng.bytes(int(n)) for n in rng.choice([0, 1, 5, 300, 70_000], size=400)]
    data = frame_records(pa.array(records, pa.binary())).to_pybytes()
    path = tmp_path / "cut.tfrecord.gz"
    with path.open("wb") as handle:  # members cut at arbitrary bytes, not at frame boundaries
        cuts = sorted(set(rng.integers(0, len(data), size=5).tolist()) | {0, len(data)})
        for a, b in zip(cuts, cuts[1:]):
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            handle.write(compressor.compress(data[a:b]) + compressor.flush())
    ours = [r for chunk in iter_gzip_tfrecords(str(path), chunk_bytes=chunk_bytes) for r in chunk]
    assert ours == records == [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


@pytest.mark.parametrize("level", [1, 6])
def test_gzip_compressor_writes_gzip_that_tensorflow_reads(tmp_path, level):
    """Level 1 is ISA-L's, the others zlib's: both write gzip members TensorFlow and zlib read,
    the same bytes on every run, and level 1 no bigger than zlib's level 1 (plus 1%)."""
    import zlib

    import tensorflow as tf

    from tasks.coders import gzip_compressor

    records = encode_examples(_batch(5000, seed=8))
    data = frame_records(records).to_pybytes()

    def compress() -> bytes:
        compressor = gzip_compressor(level)
        return compressor.compress(data) + compressor.flush()

    member = compress()
    assert member == compress()
    path = tmp_path / "level.tfrecord.gz"
    path.write_bytes(member + member)  # two members, as ingest writes one per batch and shard
    assert zlib.decompressobj(31).decompress(member) == data
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")] == records.to_pylist() * 2
    reference = zlib.compressobj(level, zlib.DEFLATED, 31)
    assert len(member) <= 1.01 * len(reference.compress(data) + reference.flush())
