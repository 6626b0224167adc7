"""ingest_examples: CSV/Parquet (local, s3:// or package://) to GZIP TFRecord shards, streamed.

The sources are read as a stream of Arrow record batches (pyarrow's CSV reader and Parquet
row groups), so memory does not grow with the number of rows. Each batch is checked, split
train/eval by a deterministic hash (of ``split_key`` when set, else of the whole row),
encoded to ``tf.train.Example``s by :mod:`tasks.coders` and compressed, on all cores; batches
are written in source order as gzip members, so the same input always gives the same bytes.
The shards and a ``manifest.json`` (counts, files, source digests, column types) are
published atomically at a run-scoped URI.

Column types come from, in order: ``data.column_types`` in the config, the pipeline's
schema (curated or recorded), else the first source file. An integer column that later
holds fractions is widened to float (the ingest restarts once); text in a numeric column is
an error that names the file, the column, the row and the value.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import glob
import importlib.resources
import json
import logging
import re
import shutil
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import storage
from tasks.config import PipelineConfig
from tasks.progress import report
from tasks.settings import usable_cpus

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
COMPRESSION = "GZIP"
KINDS = ("int", "float", "string")
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
_CSV_BLOCK_BYTES = 4 << 20
_PARQUET_BATCH_ROWS = 65_536
_PROGRESS_SECONDS = 10.0
_BAR_SECONDS = 1.0


class DataError(ValueError):
    """Source data that cannot be ingested; the message names the file and the column."""


class _Widen(Exception):
    """An inferred column type must widen (int to float, or a first type for an all-null start)."""

    def __init__(self, column: str, kind: str, reason: str) -> None:
        super().__init__(f"column {column!r} becomes {kind}: {reason}")
        self.column, self.kind, self.reason = column, kind, reason


@dataclass(frozen=True)
class SourceFile:
    uri: str
    local: Path | None = None  # None: fetched from S3 when read


@dataclass(frozen=True)
class ExamplesArtifact:
    """What ``ingest_examples`` published."""

    uri: str
    counts: dict[str, int]
    columns: dict[str, str]
    label: str
    rows: int = 0
    seconds: float = 0.0
    widened: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_sources(sources: list[str], variables: dict[str, str]) -> list[str]:
    """Render Jinja templates in source URIs (``.../date={{ ds }}/*.parquet``)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    rendered = []
    for source in sources:
        try:
            rendered.append(env.from_string(source).render(**variables))
        except jinja2.TemplateError as error:
            raise DataError(f"data source {source!r}: cannot render template: {error}") from None
    return rendered


def _package_file(uri: str) -> Path:
    package, _, rel = uri[len("package://"):].partition("/")
    try:
        path = Path(str(importlib.resources.files(package).joinpath(rel)))
    except ModuleNotFoundError:
        raise DataError(f"data source {uri}: package {package!r} is not installed") from None
    if not path.is_file():
        raise DataError(f"data source {uri}: {rel!r} is not a file in package {package!r}")
    return path


def resolve_sources(uris: list[str]) -> list[SourceFile]:
    """Expand globs; raises if a URI matches nothing. Nothing is downloaded yet."""
    files: list[SourceFile] = []
    for uri in uris:
        if uri.startswith("package://"):
            files.append(SourceFile(uri, _package_file(uri)))
        elif storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            if any(ch in key for ch in "*?["):
                base = key[: min(key.find(ch) for ch in "*?[" if ch in key)].rsplit("/", 1)[0]
                base_uri = f"s3://{bucket}/{base}"
                names = [f"{base_uri}/{k}" for k in storage.list_files(base_uri)]
                matched = sorted(u for u in names if fnmatch.fnmatchcase(u, uri))
            else:
                matched = [uri] if storage.exists(uri) else []
            if not matched:
                raise DataError(f"data source {uri}: no such object")
            files.extend(SourceFile(m) for m in matched)
        else:
            pattern = str(storage.local_path(uri))
            globbed = any(ch in pattern for ch in "*?[")
            matched = [m for m in (sorted(glob.glob(pattern)) if globbed else [pattern]) if Path(m).is_file()]
            if not matched and Path(pattern).is_dir():
                raise DataError(f"data source {uri}: is a folder; name its files, e.g. {uri.rstrip('/')}/*.parquet")
            if not matched:
                raise DataError(f"data source {uri}: {'no file matches' if globbed else 'no such file'}")
            files.extend(SourceFile(m, Path(m)) for m in matched)
    return files


def _format_of(source: SourceFile, configured: str) -> str:
    if configured != "auto":
        return configured
    name = source.uri.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".tsv", ".txt")):
        return "csv"
    raise DataError(f"{source.uri}: cannot tell the format from the name; set data.format to csv or parquet")


def kind_of(arrow_type: pa.DataType) -> str | None:
    """``int``, ``float`` or ``string`` (the ``tf.train.Example`` list a column becomes); None for null."""
    if pa.types.is_null(arrow_type):
        return None
    if pa.types.is_dictionary(arrow_type):
        return kind_of(arrow_type.value_type)
    if pa.types.is_integer(arrow_type) or pa.types.is_boolean(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    return "string"


# --- reading ---------------------------------------------------------------------------------

@dataclass
class _Reader:
    """One open source: its column names and a stream of record batches."""

    names: list[str]
    types: dict[str, pa.DataType]
    batches: Iterator[pa.RecordBatch]


def _open_csv(path: Path, uri: str, kinds: Mapping[str, str | None], declared: frozenset[str],
              delimiter: str = ",") -> _Reader:
    import pyarrow.csv as pacsv

    # An int column is read as float64 and cast, so "181.0" (as pandas writes ints with gaps) is 181
    # while 181.5 is an error naming the row; one written as True/False (a boolean) is read as one.
    booleans = _boolean_columns(path, [n for n, k in kinds.items() if k == "int"], delimiter)
    column_types = {name: (pa.bool_() if name in booleans else pa.float64()) if kind == "int" else _ARROW_TYPES[kind]
                    for name, kind in kinds.items() if kind}
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types, strings_can_be_null=True, quoted_strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            if path.stat().st_size:  # one line without a line break: a header at most
                raise DataError(f"{uri}: no data rows (the file holds one line, a header at most)") from None
            raise DataError(f"{uri}: the file is empty (no header, no rows)") from None
        raise _csv_error(error, path, uri, _csv_header(path, delimiter), declared, delimiter) from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{uri}: cannot read as CSV: {error}") from None
    names = list(reader.schema.names)
    types = {f.name: f.type for f in reader.schema}

    def batches() -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as error:
                raise _csv_error(error, path, uri, names, declared, delimiter) from None
            except (OSError, EOFError, zlib.error) as error:
                raise DataError(f"{uri}: cannot read as CSV: {error}") from None
            yield batch

    return _Reader(names, types, batches())


def _csv_sample(path: Path, sample_bytes: int = 1 << 20) -> str | None:
    """The first ``sample_bytes`` of a (possibly compressed) CSV file as text, or None when unreadable."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            return stream.read(sample_bytes).decode("utf-8", errors="replace")
    except (OSError, pa.ArrowInvalid):
        return None


def _boolean_columns(path: Path, columns: list[str], delimiter: str = ",") -> set[str]:
    """Which of ``columns`` hold only true/false (any case) in the file's first rows."""
    import csv
    import io

    if not columns:
        return set()
    text = _csv_sample(path)
    if text is None:
        return set()
    try:
        rows = list(csv.reader(io.StringIO(text.rsplit("\n", 1)[0] if "\n" in text else text), delimiter=delimiter))
    except csv.Error:  # e.g. a value past the csv module's field limit: no booleans found
        return set()
    if len(rows) < 2:
        return set()
    header = rows[0]
    found = set()
    for name in columns:
        if name in header:
            at = header.index(name)
            values = {row[at].strip().lower() for row in rows[1:] if at < len(row) and row[at].strip()}
            if values and values <= {"true", "false"}:
                found.add(name)
    return found


def _csv_header(path: Path, delimiter: str = ",") -> list[str] | None:
    import csv
    import io

    first = (_csv_sample(path) or "").splitlines()[:1]
    try:
        return next(csv.reader(io.StringIO(first[0]), delimiter=delimiter)) if first else None
    except (StopIteration, csv.Error):
        return None


_CSV_CONVERSION = re.compile(r"In CSV column #(\d+): CSV conversion error to (\w+): invalid value '(.*)'", re.S)


def _csv_error(error: Exception, path: Path, uri: str, names: list[str] | None,
               declared: frozenset[str], delimiter: str = ",") -> Exception:
    """A conversion error as a widening (inferred int meets a fraction) or a DataError with the row."""
    text = str(error)
    match = _CSV_CONVERSION.search(text)
    if "invalid UTF8" in text:
        column = re.search(r"In CSV column #(\d+)", text)
        if column and names is not None and int(column.group(1)) < len(names):
            name = names[int(column.group(1))]
            return DataError(f"{uri}: column {name!r} holds bytes that are not valid UTF-8 "
                             f"(data row {_first_row(path, name, pa.binary(), _not_utf8, delimiter) or '?'})")
        return DataError(f"{uri}: the file is not valid UTF-8 text ({text})")
    if not match or names is None:
        return DataError(f"{uri}: cannot parse as CSV: {text}")
    column = names[int(match.group(1))]
    target, value = match.group(2), match.group(3)
    value_kind = _kind_of_text(value)
    if column not in declared:
        if target == "null":
            return _Widen(column, value_kind, f"{uri} holds {value!r} after empty rows")
        if target == "int64" and value_kind == "float":
            return _Widen(column, "float", f"{uri} holds {value!r}")
    row = _first_row(path, column, pa.string(), lambda v: v == value, delimiter)
    where = f" at data row {row}" if row else ""
    expected = {"int64": "an integer", "double": "a number", "null": "empty"}.get(target, target)
    hint = "" if column in declared else (f"; if {column!r} is categorical, declare it in the config: "
                                          f"data.column_types: {{{column}: string}}")
    return DataError(f"{uri}: column {column!r} holds {value!r}{where}, expected {expected}{hint}")


def _kind_of_text(value: str) -> str:
    try:
        int(value)
        return "int"
    except ValueError:
        pass
    try:
        float(value)
        return "float"
    except ValueError:
        return "string"


def _first_row(path: Path, column: str, arrow_type: pa.DataType, bad, delimiter: str = ",") -> int | None:
    """The 1-based data row of the first value of ``column`` for which ``bad(value)`` holds
    (a second read, only on the error path)."""
    import pyarrow.csv as pacsv

    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=[column], column_types={column: arrow_type}),
        )
        seen = 0
        for batch in reader:
            for i, value in enumerate(batch.column(0).to_pylist()):
                if value is not None and bad(value):
                    return seen + i + 1
            seen += batch.num_rows
    except (pa.ArrowInvalid, OSError):
        return None
    return None


def _not_utf8(value: bytes) -> UnicodeDecodeError | None:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        return error
    return None


def _open_parquet(path: Path, uri: str) -> _Reader:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{uri}: cannot read as Parquet (truncated or not Parquet?): {error}") from None
    schema = parquet.schema_arrow
    names = list(schema.names)

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS)
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{uri}: cannot read as Parquet (truncated?): {error}") from None

    return _Reader(names, {f.name: f.type for f in schema}, batches())


# --- checking and splitting one batch ------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    columns: list[str]
    label: str
    kinds: dict[str, str | None]
    declared: frozenset[str]
    fractions: list[float]
    split_key: str | None
    num_shards: int
    level: int


def _normalize(batch: pa.RecordBatch, plan: _Plan, uri: str, first_row: int) -> pa.RecordBatch:
    """The plan's columns, cast to their kinds, NaN as missing; raises on bad values."""
    arrays = []
    for name in plan.columns:
        array = batch.column(batch.schema.get_field_index(name))
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        kind, actual = plan.kinds.get(name), kind_of(array.type)
        if actual is not None and (kind is None or (kind == "int" and actual == "float")) and name not in plan.declared:
            raise _Widen(name, actual, f"{uri} holds {actual} values")
        if kind == "string" and (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
            _check_utf8(array, name, uri, first_row)
        if kind is not None and array.type != _ARROW_TYPES[kind]:
            array = _cast(array, kind, name, uri, first_row)
        if kind == "float":
            array = _finite_or_missing(array, name, uri, first_row)
        arrays.append(array)
    out = pa.RecordBatch.from_arrays(arrays, plan.columns)
    label = out.column(plan.columns.index(plan.label))
    if label.null_count:
        missing = np.flatnonzero(np.asarray(label.is_null(), dtype=bool))
        raise DataError(
            f"{uri}: column {plan.label!r} (the label) is empty in {len(missing)} row(s) of this batch, "
            f"first at data row {first_row + int(missing[0]) + 1}"
        )
    return out


def _cast(array: pa.Array, kind: str, name: str, uri: str, first_row: int) -> pa.Array:
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), _ARROW_TYPES[kind])
    try:
        # Integers as floats round past 2**53: what declaring an integer column float asks for.
        return array.cast(_ARROW_TYPES[kind], safe=not (kind == "float" and pa.types.is_integer(array.type)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = array.to_pylist()
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            pa.array([value]).cast(_ARROW_TYPES[kind])
        except OverflowError:
            raise DataError(
                f"{uri}: column {name!r} holds {value!r} at data row {first_row + i + 1}, beyond the 64-bit "
                f"integer range of tf.train.Example; declare it float or text: data.column_types: {{{name}: float}}"
            ) from None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            expected = {"int": "an integer", "float": "a number", "string": "text"}[kind]
            raise DataError(
                f"{uri}: column {name!r} holds {value!r} at data row {first_row + i + 1}, expected {expected} "
                f"(the column's type is {kind})"
            ) from None
    raise DataError(f"{uri}: column {name!r} of type {array.type} cannot become {kind}")


def _finite_or_missing(array: pa.Array, name: str, uri: str, first_row: int) -> pa.Array:
    from tasks.coders import values_of

    values = values_of(array, pa.float64(), "<f8")
    valid = np.asarray(array.is_valid(), dtype=bool) if array.null_count else True
    infinite = np.isinf(values) & valid
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{uri}: column {name!r} holds {values[row]} at data row {first_row + row + 1}; "
            "infinite values cannot be normalized (clean or drop them at the source)"
        )
    nan = np.isnan(values) & valid
    if nan.any():  # NaN is a missing value, as pandas and the CSV reader treat it
        array = pc.if_else(pa.array(nan), pa.nulls(len(array), pa.float64()), array)
    return array


def _check_utf8(array: pa.Array, name: str, uri: str, first_row: int) -> None:
    for i, value in enumerate(array.to_pylist()):
        error = _not_utf8(value) if value is not None else None
        if error is not None:
            raise DataError(
                f"{uri}: column {name!r} holds bytes that are not valid UTF-8 at data row "
                f"{first_row + i + 1} ({value!r}: {error.reason})"
            )


_MIX = np.uint64(0x9E3779B97F4A7C15)
_NULL_HASH = np.uint64(0x5851F42D4C957F2D)


def row_hashes(batch: pa.RecordBatch, columns: list[str]) -> np.ndarray:
    """A 64-bit hash per row of ``columns`` that depends only on the row's values."""
    import pandas as pd

    from tasks.coders import values_of

    hashes = np.zeros(batch.num_rows, dtype=np.uint64)
    for name in columns:
        array = batch.column(batch.schema.get_field_index(name))
        if pa.types.is_null(array.type):
            column = np.full(batch.num_rows, _NULL_HASH, dtype=np.uint64)
        elif kind_of(array.type) == "string":
            encoded = array.dictionary_encode()
            uniques = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
            table = pd.util.hash_array(uniques) if len(uniques) else np.zeros(0, dtype=np.uint64)
            indices = np.asarray(encoded.indices.fill_null(0), dtype=np.int64)
            column = table[indices] if len(table) else np.zeros(batch.num_rows, dtype=np.uint64)
        else:
            floating = kind_of(array.type) == "float"
            column = pd.util.hash_array(values_of(array, pa.float64() if floating else pa.int64(),
                                                  "<f8" if floating else "<i8"))
        if array.null_count:
            column = np.where(np.asarray(array.is_null(), dtype=bool), _NULL_HASH, column)
        hashes = (hashes ^ column) * _MIX
        hashes ^= hashes >> np.uint64(29)
    return hashes


def assign_splits(hashes: np.ndarray, fractions: list[float]) -> np.ndarray:
    """Split index per row from its hash: the same row always lands in the same split."""
    position = (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    bounds = np.cumsum(fractions)
    bounds[-1] = 1.0
    return np.searchsorted(bounds, position, side="right")


def split_names(fractions: Mapping[str, float]) -> list[str]:
    """A fixed order (train, eval, then the rest by name) so assignment never depends on dict order."""
    return sorted(fractions, key=lambda s: (s != "train", s != "eval", s))


@dataclass
class _Encoded:
    counts: np.ndarray  # per (split, shard)
    members: list[bytes]  # one gzip member per (split, shard), empty when no rows
    non_null: np.ndarray  # per column


def _encode_batch(batch: pa.RecordBatch, plan: _Plan, uri: str, first_row: int) -> _Encoded:
    from tasks.coders import encode_tfrecords, gzip_compressor

    batch = _normalize(batch, plan, uri, first_row)
    hashes = row_hashes(batch, [plan.split_key] if plan.split_key else plan.columns)
    groups = assign_splits(hashes, plan.fractions) * plan.num_shards + (
        (hashes & np.uint64(0xFFFFFFFF)) % np.uint64(plan.num_shards)
    ).astype(np.int64)
    n_groups = len(plan.fractions) * plan.num_shards
    counts = np.bincount(groups, minlength=n_groups)
    ordered = batch.take(pa.array(np.argsort(groups, kind="stable")))
    members, start = [], 0
    for count in counts.tolist():
        if count:
            compressor = gzip_compressor(plan.level)
            framed = encode_tfrecords(ordered.slice(start, count))
            members.append(compressor.compress(framed) + compressor.flush())
        else:
            members.append(b"")
        start += count
    non_null = np.array([len(c) - c.null_count for c in batch.columns], dtype=np.int64)
    return _Encoded(counts, members, non_null)


# --- the step ----------------------------------------------------------------------------

def ingest_examples(
    config: PipelineConfig,
    sources: list[str],
    output_uri: str,
    work_dir: Path,
    column_types: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> ExamplesArtifact:
    """Stream the sources into split, sharded GZIP TFRecords published at ``output_uri``.

    Args:
        config: The pipeline (label, features, split, shards, column types, compression).
        sources: Rendered source URIs.
        output_uri: Run-scoped location to publish at (replaced on a retry).
        work_dir: Scratch space; removed on return.
        column_types: Column kinds from the pipeline's schema (``data.column_types`` wins).
        workers: Threads encoding and compressing (default: every core).

    Raises:
        DataError: A source is missing, unreadable, empty, lacks a column or holds a bad value.
    """
    declared = {**(column_types or {}), **config.data.column_types}
    widened: dict[str, str] = {}
    started = time.perf_counter()
    for _attempt in range(64):
        try:
            counts, columns, rows = _ingest_once(
                config, sources, output_uri, work_dir, declared, widened, workers or usable_cpus()
            )
            return ExamplesArtifact(
                uri=output_uri, counts=counts, columns=columns, label=config.label, rows=rows,
                seconds=round(time.perf_counter() - started, 3), widened=widened,
            )
        except _Widen as widen:
            log.info("ingest: %s; starting over with %s as %s", widen.reason, widen.column, widen.kind)
            widened[widen.column] = widen.kind
    raise DataError("ingest: column types did not settle after 64 passes")  # pragma: no cover


def _ingest_once(config, sources, output_uri, work_dir: Path, declared: dict[str, str],
                 widened: dict[str, str], workers: int) -> tuple[dict[str, int], dict[str, str], int]:
    from tasks.coders import gzip_compressor

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="ingest-"))
    try:
        resolved = resolve_sources(sources)
        splits = split_names(config.data.split)
        shards = config.data.num_shards
        out = scratch / "examples"
        files: dict[str, list[str]] = {s: [] for s in splits}
        handles = []
        for split in splits:
            (out / split).mkdir(parents=True)
            for shard in range(shards):
                rel = f"{split}/data-{shard:05d}-of-{shards:05d}.tfrecord.gz"
                files[split].append(rel)
                handles.append((out / rel).open("wb"))
        plan: _Plan | None = None
        totals = np.zeros(len(splits) * shards, dtype=np.int64)
        non_null: np.ndarray | None = None
        source_records = []
        rows_total = 0
        began = last_log = last_shown = time.perf_counter()
        pending: deque[concurrent.futures.Future] = deque()

        def drain(limit: int) -> None:
            """Write finished batches in submission order until at most ``limit`` are in flight."""
            nonlocal non_null
            while len(pending) > limit:
                encoded = pending.popleft().result()
                for handle, member in zip(handles, encoded.members):
                    if member:
                        handle.write(member)
                totals[:] += encoded.counts
                non_null = encoded.non_null if non_null is None else non_null + encoded.non_null

        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
                for index, source in enumerate(resolved):
                    local = source.local or storage.download_file(
                        source.uri, scratch / "download" / f"{index:05d}-{Path(source.uri).name}"
                    )
                    reader = _open(source, local, config.data.format,
                                   {**(plan.kinds if plan else {}), **declared, **widened}, frozenset(declared),
                                   config.data.delimiter)
                    plan = plan or _make_plan(config, reader, source.uri, declared, widened)
                    _check_columns(reader, source.uri, plan, resolved[0].uri)
                    digest = pool.submit(storage.sha256_file, local)
                    file_rows = 0
                    for batch in reader.batches:
                        pending.append(pool.submit(_encode_batch, batch, plan, source.uri, file_rows))
                        file_rows += batch.num_rows
                        drain(workers * 2)
                        now = time.perf_counter()
                        if now - last_shown > _BAR_SECONDS:
                            # INFO for the task log every _PROGRESS_SECONDS, DEBUG for a terminal's bar between.
                            level = logging.INFO if now - last_log > _PROGRESS_SECONDS else logging.DEBUG
                            last_shown, last_log = now, (now if level == logging.INFO else last_log)
                            done = rows_total + file_rows
                            report(log, level, "ingest: %d rows read from %d/%d file(s), %.0f rows/s",
                                   done, index + 1, len(resolved), done / (now - began), task="ingest", done=done,
                                   unit="rows", rate=done / (now - began), detail=f"file {index + 1}/{len(resolved)}")
                    drain(0)
                    if file_rows == 0:
                        raise DataError(f"{source.uri}: no data rows (the file holds only a header)")
                    rows_total += file_rows
                    source_records.append({"uri": source.uri, "sha256": digest.result(), "rows": file_rows})
                    if source.local is None:
                        local.unlink(missing_ok=True)
        finally:
            for handle in handles:
                handle.close()
        assert plan is not None and non_null is not None
        empty = [c for c, n in zip(plan.columns, non_null.tolist()) if n == 0]
        if empty:
            raise DataError(
                f"{', '.join(s['uri'] for s in source_records)}: column(s) {empty} have no value in any of "
                f"{rows_total} rows"
            )
        counts = {}
        for i, split in enumerate(splits):
            counts[split] = int(totals[i * shards:(i + 1) * shards].sum())
            if counts[split] == 0:
                raise DataError(
                    f"{', '.join(r['uri'] for r in source_records)}: split {split!r} received no rows out of "
                    f"{rows_total}: too few rows for the split fractions"
                )
        for i, handle in enumerate(handles):
            path = Path(handle.name)
            if path.stat().st_size == 0:  # a valid, empty gzip stream
                path.write_bytes(gzip_compressor(plan.level).flush())
        columns = {c: plan.kinds[c] or "string" for c in plan.columns}
        manifest = {
            "sources": source_records,
            "rows": rows_total,
            "columns": columns,
            "label": config.label,
            "features": [c for c in plan.columns if c != config.label],
            "splits": {s: {"count": counts[s], "files": files[s]} for s in splits},
            "split": {"fractions": dict(config.data.split), "key": config.data.split_key},
            "compression": COMPRESSION,
            "compression_level": plan.level,
            "format": "tf.train.Example",
            "column_types": {"declared": sorted(declared), "widened": dict(widened)},
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        storage.publish_dir(out, output_uri)
        log.info("ingest: %d rows, splits %s, published %s", rows_total, counts, output_uri)
        return counts, columns, rows_total
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _open(source: SourceFile, local: Path, data_format: str, kinds: Mapping[str, str | None],
          declared: frozenset[str], delimiter: str = ",") -> _Reader:
    if _format_of(source, data_format) == "parquet":
        return _open_parquet(local, source.uri)
    return _open_csv(local, source.uri, kinds, declared, delimiter)


def _label_missing(uri: str, label: str, names: list[str]) -> DataError:
    hint = ""
    padded = [n for n in names if n != label and n.strip() == label]
    if padded:
        hint = f"; {padded[0]!r} has spaces around its name"
    elif len(names) == 1:  # one column: maybe another delimiter
        found = [d for d in (";", "\t", "|") if d in names[0]]
        if found:
            hint = f"; the header looks {found[0]!r}-delimited: set data.delimiter"
    return DataError(f"{uri}: the label column {label!r} is missing (columns: {names}){hint}")


def _make_plan(config: PipelineConfig, reader: _Reader, uri: str, declared: Mapping[str, str],
               widened: Mapping[str, str]) -> _Plan:
    names = reader.names
    if config.label not in names:
        raise _label_missing(uri, config.label, names)
    features = config.features or [c for c in dict.fromkeys(names) if c != config.label]
    unnamed = [i + 1 for i, c in enumerate(names) if not c.strip() and c in features]
    if unnamed:
        raise DataError(f"{uri}: column(s) {unnamed} have no name (an index written with the data?): name or drop "
                        f"them, or list the feature columns in the config (features: [...])")
    columns = [*features, config.label]
    kinds = {c: declared.get(c) or widened.get(c) or (kind_of(reader.types[c]) if c in reader.types else None)
             for c in columns}
    if config.task.value == "multiclass" and kinds[config.label] == "int" and config.label not in declared:
        kinds[config.label] = "string"  # class codes (3, 5, 8) are class names: a vocabulary, not numbers
    if config.data.split_key and config.data.split_key not in names:
        raise DataError(f"{uri}: the split key column {config.data.split_key!r} is missing (columns: {names})")
    return _Plan(
        columns=columns, label=config.label, kinds=kinds, declared=frozenset(declared),
        fractions=[config.data.split[s] for s in split_names(config.data.split)],
        split_key=config.data.split_key, num_shards=config.data.num_shards,
        level=config.data.compression_level,
    )


def _check_columns(reader: _Reader, uri: str, plan: _Plan, first_uri: str) -> None:
    names = reader.names
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataError(f"{uri}: duplicated column(s) {duplicated} in the header")
    if plan.label not in names:
        raise _label_missing(uri, plan.label, names)
    missing = [c for c in plan.columns if c not in names]
    if missing:
        raise DataError(f"{uri}: feature column(s) {missing} are missing (columns: {names}; "
                        f"expected those of {first_uri})")


def read_manifest(examples_uri: str) -> dict[str, Any]:
    """The manifest of a completely published examples artifact."""
    storage.require_complete(examples_uri)
    return json.loads(storage.read_bytes(storage.join(examples_uri, MANIFEST)))


def split_files(local_examples: Path, manifest: dict[str, Any], split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise KeyError(f"the examples have no split {split!r} (splits: {sorted(manifest['splits'])})")
    return [str(local_examples / rel) for rel in manifest["splits"][split]["files"]]
