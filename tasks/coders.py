"""Vectorized coders: Arrow record batches to serialized ``tf.train.Example``s and TFRecord frames.

tfx-bsl's ``RecordBatchToExamplesEncoder`` builds one protobuf message per row in C++ and
costs about 235 ns per feature value (4.7 s for 1M rows x 20 columns on one core), more than
reading the source and compressing the output together. These coders write the same protobuf
wire format column by column with numpy and Arrow kernels instead, so their cost is a few
array passes per column; the tests check every output against tfx-bsl's encoder and
``tf.train.Example`` parsing.

Supported columns are scalar (one value or null per row): integer and boolean columns become
``int64_list``, floating columns ``float_list`` (float32, as ``tf.train.Example`` stores
them), string and binary columns ``bytes_list``. A null becomes an absent feature, as with
tfx-bsl. TFRecord framing follows ``tensorflow/core/lib/io/record_writer.cc``: a little-endian
uint64 length, the masked CRC-32C of the length, the data and the masked CRC-32C of the data.
"""

from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from isal import isal_zlib

_VARINT_WIDTH = 10
_SHIFTS = np.arange(_VARINT_WIDTH, dtype=np.uint64) * np.uint64(7)
_THRESHOLDS = [np.uint64(1) << np.uint64(7 * k) for k in range(1, _VARINT_WIDTH)]

# Protobuf tags (field number << 3 | wire type 2, length-delimited) of the Example messages.
_TAG_1 = b"\x0a"  # Example.features, Features.feature (map entry), MapEntry.key, *List.value
_TAG_2 = b"\x12"  # MapEntry.value, Feature.float_list
_TAG_3 = b"\x1a"  # Feature.int64_list
_NO_SEPARATOR = pa.scalar(b"", pa.large_binary())


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes each uint64 takes as a varint (1 to 10)."""
    lengths = np.ones(len(values), dtype=np.int64)
    for threshold in _THRESHOLDS:
        lengths += values >= threshold
    return lengths


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every value's varint as a row of a (n, 10) byte matrix, and its length."""
    values = values.astype(np.uint64, copy=False)
    lengths = varint_lengths(values)
    width = int(lengths.max()) if len(lengths) else 1
    groups = ((values[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    if width > 1:
        groups[np.arange(width) < (lengths[:, None] - 1)] |= 0x80
    return groups, lengths


def values_of(array: pa.Array, arrow_type: pa.DataType, dtype: str) -> np.ndarray:
    """A numeric array's values as numpy, cast to ``arrow_type``, without a copy when it already
    is; what null slots hold is unspecified."""
    if array.type != arrow_type:
        array = array.cast(arrow_type, safe=False)
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset: array.offset + len(array)]


def _feature_kind(arrow_type: pa.DataType) -> str:
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)):
        return "bytes"
    raise TypeError(f"cannot encode a column of Arrow type {arrow_type} as a tf.train.Example feature")


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """An Arrow large_binary array over ``data`` (the rows' bytes back to back), no copy."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    )


def _fixed(block: np.ndarray, present: np.ndarray | None) -> pa.Array:
    """Rows of equal width (``block`` is n x width); absent rows become empty strings."""
    n, width = block.shape
    if present is None:
        return _binary(block, np.full(n, width, dtype=np.int64))
    return _binary(block[present], np.where(present, width, 0))


def _ragged(block: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Row ``i`` is ``block[i, :lengths[i]]``."""
    return _binary(block[np.arange(block.shape[1]) < lengths[:, None]], lengths)


def _entry_head(key: bytes) -> bytes:
    """MapEntry key field and the value field's tag."""
    return _TAG_1 + varint(len(key)) + key + _TAG_2


def _encode_column(name: str, column: pa.Array) -> list[pa.Array]:
    """One column's ``Features.feature`` map entries as arrays to join row-wise (empty for nulls)."""
    n = len(column)
    if pa.types.is_null(column.type):
        return []  # never present
    present = ~np.asarray(column.is_null(), dtype=bool) if column.null_count else None
    head = _entry_head(name.encode("utf-8"))
    kind = _feature_kind(column.type)
    if kind == "float":
        values = values_of(column, pa.float32(), "<f4")
        # 0a <E> key-field 12 08 | Feature 12 06 | FloatList 0a 04 <4 bytes>
        prefix = _TAG_1 + varint(len(head) + 9) + head + b"\x08" + _TAG_2 + b"\x06" + _TAG_1 + b"\x04"
        block = np.empty((n, len(prefix) + 4), dtype=np.uint8)
        block[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        block[:, len(prefix):] = values.view(np.uint8).reshape(n, 4)
        return [_fixed(block, present)]
    if kind == "int":
        values = values_of(column, pa.int64(), "<i8").view(np.uint64)
        digits, sizes = _varints(values)
        # 0a <E> key-field 12 <F> | Feature 1a <2+V> | Int64List 0a <V> <varint>, V = varint bytes
        headers = [
            _TAG_1 + varint(len(head) + len(varint(4 + v)) + 4 + v) + head + varint(4 + v)
            + _TAG_3 + varint(2 + v) + _TAG_1 + varint(v)
            for v in range(_VARINT_WIDTH + 1)
        ]
        widths = {len(h) for h in headers[1:]}
        if len(widths) == 1:
            table = np.frombuffer(b"".join(headers[1:]), dtype=np.uint8).reshape(_VARINT_WIDTH, -1)
            header = _fixed(table[sizes - 1], present)
        else:  # keys over ~110 bytes: the entry length's varint grows with V
            table = np.zeros((_VARINT_WIDTH + 1, max(widths)), dtype=np.uint8)
            for v, h in enumerate(headers):
                table[v, : len(h)] = np.frombuffer(h, dtype=np.uint8)
            lengths = np.array([len(h) for h in headers], dtype=np.int64)[sizes]
            header = _ragged(table[sizes], lengths if present is None else np.where(present, lengths, 0))
        return [header, _ragged(digits, sizes if present is None else np.where(present, sizes, 0))]
    strings = column.fill_null("") if column.null_count else column
    if not pa.types.is_large_binary(strings.type):
        strings = strings.cast(pa.large_binary())
    sizes = np.asarray(pc.binary_length(strings), dtype=np.int64).astype(np.uint64)
    # 0a <E> key-field 12 <F> | Feature 0a <L> | BytesList 0a <S> <bytes>
    inner = np.uint64(1) + varint_lengths(sizes).astype(np.uint64) + sizes
    feature = np.uint64(1) + varint_lengths(inner).astype(np.uint64) + inner
    entry = np.uint64(len(head)) + varint_lengths(feature).astype(np.uint64) + feature
    if n and int(entry.max()) < 128:  # every varint is one byte: a fixed-width header
        block = np.empty((n, len(head) + 7), dtype=np.uint8)
        block[:, 0] = 0x0A
        block[:, 1] = entry
        block[:, 2: 2 + len(head)] = np.frombuffer(head, dtype=np.uint8)
        at = 2 + len(head)
        block[:, at] = feature
        block[:, at + 1] = 0x0A
        block[:, at + 2] = inner
        block[:, at + 3] = 0x0A
        block[:, at + 4] = sizes
        return [_fixed(block, present), strings]
    pieces = [np.broadcast_to(np.frombuffer(_TAG_1, dtype=np.uint8), (n, 1))]
    lengths = [np.ones(n, dtype=np.int64)]
    for value, tail in ((entry, head), (feature, _TAG_1), (inner, _TAG_1), (sizes, b"")):
        digits, size = _varints(value)
        pieces += [digits, np.broadcast_to(np.frombuffer(tail, dtype=np.uint8), (n, len(tail)))]
        lengths += [size, np.full(n, len(tail), dtype=np.int64)]
    mask = np.hstack([np.arange(p.shape[1]) < length[:, None] for p, length in zip(pieces, lengths)])
    total = np.sum(lengths, axis=0)
    if present is not None:
        mask &= present[:, None]
        total = np.where(present, total, 0)
    return [_binary(np.hstack(pieces)[mask], total), strings]


def _lengths(parts: list[pa.Array], n: int) -> np.ndarray:
    """Row lengths of the row-wise concatenation of ``parts``, without concatenating."""
    total = np.zeros(n, dtype=np.uint64)
    for part in parts:
        offsets = _offsets(part)
        total += (offsets[1:] - offsets[:-1]).astype(np.uint64)
    return total


def _example_parts(batch: pa.RecordBatch) -> list[pa.Array]:
    """Each row's ``Example`` as arrays to concatenate row-wise: the message head, then the
    feature entries column by column."""
    n = batch.num_rows
    parts: list[pa.Array] = []
    for name, column in zip(batch.schema.names, batch.columns):
        parts.extend(_encode_column(name, column))
    digits, lengths = _varints(_lengths(parts, n))  # the Features message's size
    return [_ragged(np.hstack([np.full((n, 1), 0x0A, dtype=np.uint8), digits]), lengths + 1), *parts]


def encode_examples(batch: pa.RecordBatch) -> pa.Array:
    """Serialize every row of ``batch`` as a ``tf.train.Example`` (a large_binary array).

    Raises:
        TypeError: A column is not of a scalar numeric, boolean or string type.
    """
    parts = _example_parts(batch)
    return pc.binary_join_element_wise(*parts, _NO_SEPARATOR) if len(parts) > 1 else parts[0]


def encode_tfrecords(batch: pa.RecordBatch) -> pa.Buffer:
    """``frame_records(encode_examples(batch))`` in one pass over the bytes."""
    return _frame(_example_parts(batch), batch.num_rows)


# --- TFRecord framing ------------------------------------------------------------------------

def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table[i] = crc
    return table


_CRC_TABLE = _crc32c_table()
_MASK_DELTA = np.uint32(0xA282EAD8)


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _MASK_DELTA


def _crc32c_of_u64(values: np.ndarray) -> np.ndarray:
    """CRC-32C of each value's 8 little-endian bytes, vectorized (the length headers)."""
    data = values.astype("<u8").view(np.uint8).reshape(-1, 8)
    crc = np.full(len(values), 0xFFFFFFFF, dtype=np.uint32)
    for j in range(8):
        crc = _CRC_TABLE[(crc ^ data[:, j]) & 0xFF] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def _offsets(array: pa.Array) -> np.ndarray:
    return np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset: array.offset + len(array) + 1]


def frame_records(records: pa.Array) -> pa.Buffer:
    """The TFRecord file bytes of ``records`` (serialized protos), in order, as one buffer."""
    if not pa.types.is_large_binary(records.type):
        records = records.cast(pa.large_binary())
    return _frame([records], len(records))


def _frame(parts: list[pa.Array], n: int) -> pa.Buffer:
    """TFRecord frames around records given as ``parts`` to concatenate row-wise.

    One row-wise join writes every frame with a zero data CRC; the CRCs are then computed on
    the joined bytes and written in place (the join's output buffer is new and ours alone).
    """
    import google_crc32c

    if n == 0:
        return pa.py_buffer(b"")
    lengths = _lengths(parts, n)
    header = np.empty((n, 12), dtype=np.uint8)
    header[:, :8] = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    header[:, 8:] = _mask(_crc32c_of_u64(lengths)).astype("<u4").view(np.uint8).reshape(n, 4)
    framed = pc.binary_join_element_wise(
        _fixed(header, None), *parts, _fixed(np.zeros((n, 4), dtype=np.uint8), None), _NO_SEPARATOR
    )
    bounds = _offsets(framed)
    data = np.frombuffer(framed.buffers()[2], dtype=np.uint8)
    if not data.flags.writeable:  # pragma: no cover - an allocator that hands out read-only memory
        data = data.copy()
    crc = google_crc32c.value  # reads numpy slices without copying them
    starts, ends = (bounds[:-1] + 12).tolist(), (bounds[1:] - 4).tolist()
    crcs = np.fromiter((crc(data[a:b]) for a, b in zip(starts, ends)), np.uint32, count=n)
    data[(bounds[1:] - 4)[:, None] + np.arange(4)] = _mask(crcs).astype("<u4").view(np.uint8).reshape(n, 4)
    return pa.py_buffer(data[bounds[0]: bounds[-1]])


def gzip_compressor(level: int):
    """A compressor of one gzip member at ``level``. Level 1 is ISA-L's (``isal``): here it
    writes the same size as zlib's level 1 about 4.8x faster, without the GIL; ISA-L's higher
    levels compress less than zlib's, so levels 2 to 9 are zlib's."""
    import zlib

    if level == 1:
        return isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    return zlib.compressobj(level, zlib.DEFLATED, 31)


# --- reading ---------------------------------------------------------------------------------

_LENGTH = struct.Struct("<Q")


def _split_frames(buffer: bytes, pos: int = 0) -> tuple[list[bytes], int]:
    """The data of the complete TFRecord frames in ``buffer`` from ``pos`` on, and where the
    first incomplete one starts (``len(buffer)`` when none is)."""
    records: list[bytes] = []
    append, unpack = records.append, _LENGTH.unpack_from
    last = len(buffer) - 12  # a frame is a 12-byte header, the data and a 4-byte CRC
    while pos <= last:
        stop = pos + 16 + unpack(buffer, pos)[0]
        if stop > last + 12:
            break
        append(buffer[pos + 12: stop - 4])
        pos = stop
    return records, pos


def iter_inflated(path: str, chunk_bytes: int = 4 << 20):
    """The inflated content of a gzip file (one or more members): a list of pieces per chunk read.

    ISA-L's inflate (``isal``, a drop-in for ``zlib``) is about 1.7x zlib's here and releases
    the GIL, so files can be read on threads. Every member's CRC-32 and length are checked; a
    corrupt or truncated file raises ``ValueError`` naming it.
    """
    decompressor = isal_zlib.decompressobj(31)
    with open(path, "rb") as handle:
        while data := handle.read(chunk_bytes):
            pieces = []
            while data:  # a chunk can hold the ends and starts of many gzip members
                if decompressor.eof:
                    decompressor = isal_zlib.decompressobj(31)
                try:
                    pieces.append(decompressor.decompress(data))
                except isal_zlib.error as error:
                    raise ValueError(f"{path}: corrupt GZIP data ({error})") from None
                data = decompressor.unused_data
            yield pieces
    if not decompressor.eof:
        raise ValueError(f"{path}: truncated GZIP TFRecord file")


def iter_gzip_tfrecords(path: str, chunk_bytes: int = 4 << 20):
    """Lists of the records of a GZIP TFRecord file, chunk by chunk (see ``iter_inflated``);
    several times faster than TensorFlow's GZIP record reader here. Each inflated piece is
    framed where it lies; only a frame cut by a piece's end is copied."""
    tail = b""
    for pieces in iter_inflated(path, chunk_bytes):
        records: list[bytes] = []
        for piece in pieces:
            pos = 0
            if tail:  # complete the cut frame with the head of this piece
                size = 16 + _LENGTH.unpack_from(tail + piece[:12])[0] if len(tail) + len(piece) >= 12 else None
                if size is None or len(tail) + len(piece) < size:
                    tail += piece
                    continue
                pos = size - len(tail)
                records.append((tail + piece[:pos])[12:-4])
            more, end = _split_frames(piece, pos)
            records += more
            tail = piece[end:]
        if records:
            yield records
    if tail:
        raise ValueError(f"{path}: truncated GZIP TFRecord file")


def first_records(paths: list[str], limit: int) -> list[bytes]:
    """The first ``limit`` records of GZIP TFRecord files, in file order, reading no further."""
    records: list[bytes] = []
    for path in paths:
        for chunk in iter_gzip_tfrecords(path):
            records.extend(chunk[:limit - len(records)])
            if len(records) >= limit:
                return records
    return records
