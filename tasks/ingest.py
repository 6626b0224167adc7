"""ingest_examples: CSV/Parquet (local, s3:// or package://) to GZIP TFRecord shards, streamed.

The sources are read as streams of Arrow record batches (:mod:`tasks.sources`), so memory
does not grow with the size of the rows' data. They are read twice. The first pass checks
every value, drops the rows without a label (up to ``data.max_unlabeled_fraction``), counts
each row's hash and learns the label's classes (:mod:`tasks.labels`), so that bad data stops
the run before anything is written and the split can hold its fractions
(:mod:`tasks.splitting`: exact, stratified by the label's class, duplicates spread, a
``split_key``'s groups kept together). The second pass sends each row to its split, encodes
the rows to ``tf.train.Example``s (:mod:`tasks.coders`) and compresses them on all cores;
batches are written in source order as gzip members, so the same input always gives the
same bytes. The shards and a ``manifest.json`` (counts, files, source digests, column types,
the label's classes per split) are published atomically at a run-scoped URI.

Column types come from, in order: ``data.column_types`` in the config, the pipeline's
schema (curated or recorded), else the first source file. An integer column that later
holds fractions is widened to float (the ingest restarts); text in a numeric column is an
error that names the file, the column, the row and the value.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import artifacts, storage
from tasks.artifacts import ExamplesArtifact
from tasks.config import PipelineConfig
from tasks.errors import DataError
from tasks.labels import LabelPlan, LabelScan, split_stats, stats_record
from tasks.progress import report
from tasks.settings import usable_cpus
from tasks.sources import (ARROW_TYPES, SourceFile, Widen, Reader, kind_of, label_missing, not_utf8, open_source,
                           render_sources, resolve_sources)
from tasks.splitting import BIG_GROUP, Counter, Splitter, plan_cut, split_names, unit_hashes

__all__ = ["DataError", "ExamplesArtifact", "ingest_examples", "kind_of", "read_manifest", "render_sources"]

log = logging.getLogger(__name__)

MANIFEST = artifacts.EXAMPLES_MANIFEST
COMPRESSION = "GZIP"
KINDS = ("int", "float", "string")
_PROGRESS_SECONDS = 10.0
BAR_SECONDS = 1.0


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
    labels: LabelPlan | None = None  # settled by the first pass


def _normalize(batch: pa.RecordBatch, plan: _Plan, uri: str, first_row: int) -> pa.RecordBatch:
    """The plan's columns, cast to their kinds, NaN as missing, rows without a label dropped;
    raises on bad values."""
    arrays = []
    for name in plan.columns:
        array = batch.column(batch.schema.get_field_index(name))
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        kind, actual = plan.kinds.get(name), kind_of(array.type)
        if name not in plan.declared and actual is not None and (
                kind is None or (kind == "int" and actual == "float" and not _whole(array))):
            raise Widen(name, actual, f"{uri} holds {actual} values")
        if kind == "string" and (pa.types.is_binary(array.type) or pa.types.is_large_binary(array.type)):
            _check_utf8(array, name, uri, first_row)
        if kind is not None and array.type != ARROW_TYPES[kind]:
            array = _cast(array, kind, name, uri, first_row)
        if kind == "float":
            array = _finite_or_missing(array, name, uri, first_row)
        arrays.append(array)
    out = pa.RecordBatch.from_arrays(arrays, plan.columns)
    label = out.column(plan.columns.index(plan.label))
    return out.filter(label.is_valid()) if label.null_count else out


def _whole(array: pa.Array) -> bool:
    """Whether every value of a float column is a whole number (an integer column read as float)."""
    values = array.drop_null() if array.null_count else array
    return not len(values) or bool(pc.all(pc.equal(values, pc.floor(values))).as_py())


def _cast(array: pa.Array, kind: str, name: str, uri: str, first_row: int) -> pa.Array:
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), ARROW_TYPES[kind])
    try:
        # Integers as floats round past 2**53: what declaring an integer column float asks for.
        return array.cast(ARROW_TYPES[kind], safe=not (kind == "float" and pa.types.is_integer(array.type)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values = array.to_pylist()
    for i, value in enumerate(values):
        if value is None:
            continue
        try:
            pa.array([value]).cast(ARROW_TYPES[kind])
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
        error = not_utf8(value) if value is not None else None
        if error is not None:
            raise DataError(
                f"{uri}: column {name!r} holds bytes that are not valid UTF-8 at data row "
                f"{first_row + i + 1} ({value!r}: {error.reason})"
            )


# --- the two passes over one batch ------------------------------------------------------------

@dataclass
class _Scanned:
    """One batch after checking and hashing (both passes)."""

    read: int  # rows in the source batch, with or without a label
    batch: pa.RecordBatch  # checked, rows without a label dropped
    hashes: np.ndarray
    grouped: np.ndarray
    non_null: np.ndarray  # per column

    @property
    def label(self) -> pa.Array:
        return self.batch.column(self.batch.num_columns - 1)


def _scan_batch(batch: pa.RecordBatch, plan: _Plan, uri: str, first_row: int) -> _Scanned:
    checked = _normalize(batch, plan, uri, first_row)
    hashes, grouped = unit_hashes(checked, plan.columns, plan.split_key)
    non_null = np.array([len(c) - c.null_count for c in checked.columns], dtype=np.int64)
    return _Scanned(batch.num_rows, checked, hashes, grouped, non_null)


@dataclass
class _Encoded:
    counts: np.ndarray  # per (split, shard)
    members: list[bytes]  # one gzip member per (split, shard), empty when no rows
    label_stats: np.ndarray  # per split (tasks.labels.split_stats)


def _encode_batch(batch: pa.RecordBatch, split: np.ndarray, mixed: np.ndarray, strata: np.ndarray,
                  plan: _Plan) -> _Encoded:
    from tasks.coders import encode_tfrecords, gzip_compressor

    assert plan.labels is not None
    splits = len(plan.fractions)
    label_stats = split_stats(plan.labels, split, strata, batch.column(batch.num_columns - 1), splits)
    if plan.labels.names:
        columns = [*batch.columns[:-1], plan.labels.written(batch.column(batch.num_columns - 1))]
        batch = pa.RecordBatch.from_arrays(columns, plan.columns)
    shard = ((mixed & np.uint64(0xFFFFFFFF)) % np.uint64(plan.num_shards)).astype(np.int64)
    groups = split * plan.num_shards + shard
    counts = np.bincount(groups, minlength=splits * plan.num_shards)
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
    return _Encoded(counts, members, label_stats)


class _Progress:
    """A log line every _PROGRESS_SECONDS (INFO, for task logs) and a terminal bar's update between."""

    def __init__(self, files: int) -> None:
        self.files, self.began = files, time.perf_counter()
        self.last_log = self.last_shown = self.began

    def tick(self, done: int, index: int, phase: str) -> None:
        now = time.perf_counter()
        if now - self.last_shown <= BAR_SECONDS:
            return
        level = logging.INFO if now - self.last_log > _PROGRESS_SECONDS else logging.DEBUG
        self.last_shown, self.last_log = now, (now if level == logging.INFO else self.last_log)
        rate = done / (now - self.began)
        report(log, level, "ingest (%s): %d rows read from %d/%d file(s), %.0f rows/s", phase, done, index + 1,
               self.files, rate, task="ingest", done=done, unit="rows", rate=rate,
               detail=f"{phase}, file {index + 1}/{self.files}")


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

    The sources are read twice (:mod:`tasks.splitting`): the first pass checks every value,
    counts the rows and learns the label's classes, the second writes each row into its split.

    Args:
        config: The pipeline (label, features, split, shards, column types, compression).
        sources: Rendered source URIs.
        output_uri: Run-scoped location to publish at (replaced on a retry).
        work_dir: Scratch space; removed on return.
        column_types: Column kinds from the pipeline's schema (``data.column_types`` wins).
        workers: Threads checking, encoding and compressing (default: every usable core).

    Raises:
        DataError: A source is missing, unreadable, empty, lacks a column or holds a bad value,
            too many rows have no label, or the label does not fit the task.
    """
    from_schema = dict(column_types or {})
    if config.task.value != "regression":
        # A class label is read as the data has it and named by the first pass (2.0 is the class
        # "2"), as in the run that recorded the schema: read as the schema's text, it would be "2.0".
        from_schema.pop(config.label, None)
    declared = {**from_schema, **config.data.column_types}
    widened: dict[str, str] = {}
    started = time.perf_counter()
    for _attempt in range(64):
        try:
            result = _ingest_once(config, sources, output_uri, work_dir, declared, widened,
                                  workers or usable_cpus())
            return replace(result, seconds=round(time.perf_counter() - started, 3), widened=widened)
        except Widen as widen:
            log.info("ingest: %s; starting over with %s as %s", widen.reason, widen.column, widen.kind)
            widened[widen.column] = widen.kind
    raise DataError("ingest: column types did not settle after 64 passes")  # pragma: no cover


@dataclass
class _Read:
    """The sources as the first pass found them."""

    files: list[tuple[SourceFile, Path]]
    records: list[dict[str, Any]]  # uri, sha256, rows
    plan: _Plan
    counter: Counter
    scan: LabelScan
    rows: int
    unlabeled: int
    non_null: np.ndarray


def _batches(read_files, plan: _Plan | None, config: PipelineConfig, declared: Mapping[str, str],
             widened: Mapping[str, str], on_plan) -> Iterator[tuple[int, SourceFile, Path, pa.RecordBatch, int]]:
    """Every record batch of every source, in order, with the source's index and the batch's
    first data row; the first source's columns make the plan (``on_plan``)."""
    first_uri = read_files[0][0].uri
    for index, (source, local) in enumerate(read_files):
        reader = open_source(source, local, config.data.format,
                             {**(plan.kinds if plan else {}), **declared, **widened}, frozenset(declared),
                             config.data.delimiter)
        plan = plan or on_plan(_make_plan(config, reader, source.uri, declared, widened))
        _check_columns(reader, source.uri, plan, first_uri)
        file_rows = 0
        for batch in reader.batches:
            yield index, source, local, batch, file_rows
            file_rows += batch.num_rows
        if file_rows == 0:
            raise DataError(f"{source.uri}: no data rows (the file holds only a header)")


def _in_order(pool, items, submit, take, limit: int) -> None:
    """``take(result)`` of ``submit(item)`` for every item, in item order, with at most ``limit`` in flight."""
    pending: deque = deque()
    for item in items:
        pending.append(submit(pool, item))
        while len(pending) > limit:
            take(pending.popleft().result())
    while pending:
        take(pending.popleft().result())


def _first_pass(config, resolved: list[SourceFile], scratch: Path, declared, widened, pool, workers) -> _Read:
    """Check every value, count the units, learn the label's classes and digest the sources."""
    files = [(s, s.local or storage.download_file(s.uri, scratch / "download" / f"{i:05d}-{Path(s.uri).name}"))
             for i, s in enumerate(resolved)]
    digests = [pool.submit(storage.sha256_file, local) for _, local in files]
    state: dict[str, Any] = {"plan": None, "rows": 0, "unlabeled": 0, "non_null": None, "per_file": [0] * len(files)}
    scan, counter, progress = LabelScan(config.label, config.task.value), Counter(), _Progress(len(files))

    def on_plan(plan: _Plan) -> _Plan:
        if config.task.value == "regression" and plan.kinds.get(plan.label) == "string":
            raise DataError(f"{resolved[0].uri}: the label {plan.label!r} holds text; task regression needs "
                            f"numbers: use task: binary or multiclass, or fix the column")
        state["plan"] = plan
        return plan

    def submit(pool, item):
        index, source, _, batch, first_row = item
        return pool.submit(lambda: (index, source.uri, _scan_batch(batch, state["plan"], source.uri, first_row)))

    def take(result) -> None:
        index, uri, scanned = result
        counter.add(scanned.hashes, scan.strata(scanned.label, uri), scanned.grouped)
        state["rows"] += scanned.read
        state["per_file"][index] += scanned.read
        state["unlabeled"] += scanned.read - scanned.batch.num_rows
        state["non_null"] = scanned.non_null + (0 if state["non_null"] is None else state["non_null"])
        progress.tick(state["rows"], index, "checking")

    _in_order(pool, _batches(files, None, config, declared, widened, on_plan), submit, take, workers * 2)
    records = [{"uri": s.uri, "sha256": d.result(), "rows": n} for (s, _), d, n in zip(files, digests, state["per_file"])]
    return _Read(files, records, state["plan"], counter, scan, state["rows"], state["unlabeled"], state["non_null"])


def _check_read(config: PipelineConfig, read: _Read) -> LabelPlan:
    """What the first pass found must make examples: values in every column, enough labelled rows,
    a label that fits the task. Returns the label's plan."""
    where, plan = ", ".join(r["uri"] for r in read.records), read.plan
    empty = [c for c, n in zip(plan.columns, read.non_null.tolist()) if n == 0 and c != plan.label]
    if empty:
        raise DataError(f"{where}: column(s) {empty} have no value in any of {read.rows} rows")
    labelled = read.rows - read.unlabeled
    limit = config.data.max_unlabeled_fraction
    if labelled == 0 or read.unlabeled > limit * read.rows:
        raise DataError(f"{where}: the label {plan.label!r} is empty in {read.unlabeled} of {read.rows} rows "
                        f"({read.unlabeled / read.rows:.0%}), more than data.max_unlabeled_fraction ({limit:g}) "
                        f"allows: is {plan.label!r} the right column? (rows without a label are dropped)")
    if read.unlabeled:
        log.warning("ingest: dropped %d of %d rows without a label (%.1f%%; data.max_unlabeled_fraction: %g)",
                    read.unlabeled, read.rows, 100 * read.unlabeled / read.rows, limit)
    declared = config.data.column_types.get(plan.label)
    return read.scan.settle(plan.kinds.get(plan.label) or "string", declared, where)


def _second_pass(read: _Read, splitter: Splitter, handles: list, config, declared, widened, pool,
                 workers: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Write every row into its split and shard, in source order. Returns the rows per (split,
    shard), the label statistics per split and the values of the big split-key groups."""
    plan, progress = read.plan, _Progress(len(read.files))
    totals = np.zeros(len(plan.fractions) * plan.num_shards, dtype=np.int64)
    state: dict[str, Any] = {"stats": None, "rows": 0}
    big: dict[int, str] = {}

    def scan(pool, item):
        index, source, _, batch, first_row = item
        return pool.submit(lambda: (index, _scan_batch(batch, plan, source.uri, first_row)))

    def encode(pool, result):
        index, scanned = result
        strata = plan.labels.strata(scanned.label)
        split, mixed = splitter.assign(scanned.hashes, strata, scanned.grouped)
        if splitter.cut.big_groups:
            _name_big_groups(scanned, plan.split_key, splitter.cut.big_groups, big)
        state["rows"] += scanned.read
        progress.tick(state["rows"], index, "writing")
        return pool.submit(_encode_batch, scanned.batch, split, mixed, strata, plan)

    def write(encoded: _Encoded) -> None:
        for handle, member in zip(handles, encoded.members):
            if member:
                handle.write(member)
        totals[:] += encoded.counts
        state["stats"] = encoded.label_stats + (0 if state["stats"] is None else state["stats"])

    scans = _batches(read.files, plan, config, declared, widened, lambda p: p)
    encoded: deque = deque()

    def take_scan(result) -> None:
        encoded.append(encode(pool, result))
        while len(encoded) > workers:
            write(encoded.popleft().result())

    _in_order(pool, scans, scan, take_scan, workers)
    while encoded:
        write(encoded.popleft().result())
    return totals, state["stats"], big


def _name_big_groups(scanned: _Scanned, split_key: str, big_groups: dict[int, float], names: dict[int, str]) -> None:
    keys = np.array(list(big_groups), dtype=np.uint64)
    found = np.flatnonzero(np.isin(scanned.hashes, keys) & scanned.grouped)
    if len(found):
        column = scanned.batch.column(scanned.batch.schema.get_field_index(split_key))
        for row in found.tolist():
            names.setdefault(int(scanned.hashes[row]), str(column[row].as_py()))


def _split_warnings(split_key: str | None, cut, big: dict[int, str]) -> list[str]:
    return [f"the {split_key} group {big.get(h, '?')!r} holds {share:.1%} of the rows, more than {BIG_GROUP:.0%}: "
            f"a group stays in one split, so the splits can be off their fractions by that much"
            for h, share in sorted(cut.big_groups.items(), key=lambda item: -item[1])]


def _ingest_once(config: PipelineConfig, sources: list[str], output_uri: str, work_dir: Path,
                 declared: dict[str, str], widened: dict[str, str], workers: int) -> ExamplesArtifact:
    from tasks.coders import gzip_compressor

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="ingest-"))
    try:
        resolved = resolve_sources(sources)
        splits, shards = split_names(config.data.split), config.data.num_shards
        out = scratch / "examples"
        files = {s: [f"{s}/data-{i:05d}-of-{shards:05d}.tfrecord.gz" for i in range(shards)] for s in splits}
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
            read = _first_pass(config, resolved, scratch, declared, widened, pool, workers)
            labels = _check_read(config, read)
            counter = read.counter.merge()  # every pending part, before the classes take their sorted ids
            counter.strata = labels.remap[counter.strata] if labels.classes else counter.strata
            read.plan = replace(read.plan, labels=labels)
            cut = plan_cut(read.counter, read.plan.fractions, max(len(labels.classes), 1))
            for split in splits:
                (out / split).mkdir(parents=True)
            handles = [(out / rel).open("wb") for split in splits for rel in files[split]]
            try:
                totals, stats, big = _second_pass(read, Splitter(read.counter, cut), handles, config, declared,
                                                  widened, pool, workers)
            finally:
                for handle in handles:
                    handle.close()
        counts = {s: int(totals[i * shards:(i + 1) * shards].sum()) for i, s in enumerate(splits)}
        where = ", ".join(r["uri"] for r in read.records)
        for split, count in counts.items():
            if count == 0:
                raise DataError(f"{where}: split {split!r} received no rows out of {sum(counts.values())}: too few "
                                f"rows for the split fractions")
        for handle in handles:
            if Path(handle.name).stat().st_size == 0:  # a valid, empty gzip stream
                Path(handle.name).write_bytes(gzip_compressor(read.plan.level).flush())
        warnings = _split_warnings(config.data.split_key, cut, big)
        for warning in warnings:
            log.warning("ingest: %s", warning)
        columns = {c: read.plan.kinds[c] or "string" for c in read.plan.columns}
        if labels.names:
            columns[config.label] = "string"
        manifest = _manifest(config, read, columns, counts, files, declared, widened, labels, stats, warnings)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        storage.publish_dir(out, output_uri)
        log.info("ingest: %d rows (%d without a label dropped), splits %s, published %s", read.rows,
                 read.unlabeled, counts, output_uri)
        return ExamplesArtifact(uri=output_uri, counts=counts, columns=columns, label=config.label, rows=read.rows,
                                unlabeled=read.unlabeled, warnings=warnings)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _manifest(config, read: _Read, columns, counts, files, declared, widened, labels: LabelPlan, stats,
              warnings: list[str]) -> dict[str, Any]:
    counter = read.counter
    return {
        "sources": read.records,
        "rows": read.rows,
        "unlabeled_rows": read.unlabeled,
        "duplicate_rows": int(counter.counts.sum() - len(counter.counts)) if not config.data.split_key else None,
        "columns": columns,
        "label": config.label,
        "label_stats": stats_record(labels, stats, list(counts)),
        "features": [c for c in read.plan.columns if c != config.label],
        "splits": {s: {"count": counts[s], "files": files[s]} for s in counts},
        "split": {"fractions": dict(config.data.split), "key": config.data.split_key,
                  "stratified_by_label": bool(labels.classes) and not config.data.split_key, "warnings": warnings},
        "compression": COMPRESSION,
        "compression_level": read.plan.level,
        "format": "tf.train.Example",
        "column_types": {"declared": sorted(declared), "widened": dict(widened)},
    }


def _make_plan(config: PipelineConfig, reader: Reader, uri: str, declared: Mapping[str, str],
               widened: Mapping[str, str]) -> _Plan:
    names = reader.names
    if config.label not in names:
        raise label_missing(uri, config.label, names)
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


def _check_columns(reader: Reader, uri: str, plan: _Plan, first_uri: str) -> None:
    names = reader.names
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise DataError(f"{uri}: duplicated column(s) {duplicated} in the header")
    if plan.label not in names:
        raise label_missing(uri, plan.label, names)
    missing = [c for c in plan.columns if c not in names]
    if missing:
        raise DataError(f"{uri}: feature column(s) {missing} are missing (columns: {names}; "
                        f"expected those of {first_uri})")


def read_manifest(examples_uri: str) -> dict[str, Any]:
    """The manifest of a completely published examples artifact (:class:`tasks.artifacts.Examples`)."""
    return artifacts.Examples.open(examples_uri).manifest
