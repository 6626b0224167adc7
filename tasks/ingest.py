"""ingest_examples: CSV/Parquet (local, s3:// or package://) to GZIP TFRecord shards.

Rows become ``tf.train.Example``s through tfx-bsl's C++ encoder (a missing value becomes an
absent feature), are split train/eval by a deterministic hash (of ``split_key`` when set,
else of the whole row) and published with a ``manifest.json`` (counts, files, source
digests, column types).
"""

from __future__ import annotations

import fnmatch
import glob
import importlib.resources
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import storage
from tasks.config import PipelineConfig

MANIFEST = "manifest.json"
COMPRESSION = "GZIP"
_HASH_BUCKETS = 10_000


class DataError(ValueError):
    """Source data that cannot be ingested; the message names the file and the column."""


@dataclass(frozen=True)
class SourceFile:
    uri: str
    local: Path


@dataclass(frozen=True)
class ExamplesArtifact:
    """What ``ingest_examples`` published."""

    uri: str
    counts: dict[str, int]
    columns: dict[str, str]
    label: str

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


def resolve_sources(uris: list[str], download_dir: Path) -> list[SourceFile]:
    """Expand globs and fetch remote files; raises if a URI matches nothing."""
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
            for match in matched:
                local = download_dir / f"{len(files):05d}-{Path(storage.split_s3(match)[1]).name}"
                local.write_bytes(storage.read_bytes(match))
                files.append(SourceFile(match, local))
        else:
            pattern = str(storage.local_path(uri))
            matched = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
            matched = [m for m in matched if Path(m).is_file()]
            if not matched:
                raise DataError(f"data source {uri}: no such file")
            files.extend(SourceFile(m, Path(m)) for m in matched)
    return files


def _format_of(source: SourceFile, configured: str) -> str:
    if configured != "auto":
        return configured
    name = source.local.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "csv"
    raise DataError(f"{source.uri}: cannot tell the format from the name; set data.format to csv or parquet")


def read_source(source: SourceFile, data_format: str) -> pd.DataFrame:
    """One source file as a DataFrame; any read error names the file."""
    fmt = _format_of(source, data_format)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            frame = pq.read_table(source.local).to_pandas()
        else:
            frame = pd.read_csv(source.local, encoding="utf-8", low_memory=False)
    except UnicodeDecodeError as error:
        raise DataError(f"{source.uri}: not valid UTF-8 text ({error.reason} at byte {error.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{source.uri}: the file is empty (no header, no rows)") from None
    except Exception as error:  # noqa: BLE001 - every reader failure becomes a named DataError
        raise DataError(f"{source.uri}: cannot read as {fmt}: {error}") from None
    if frame.empty:
        raise DataError(f"{source.uri}: no data rows")
    return frame


def column_kind(series: pd.Series) -> str:
    """``int``, ``float`` or ``string``: the ``tf.train.Example`` list a column becomes."""
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def _check_columns(frame: pd.DataFrame, source: SourceFile, config: PipelineConfig) -> list[str]:
    columns = [str(c) for c in frame.columns]
    # pandas renames a repeated CSV header "x" to "x.1"; Parquet keeps both names.
    duplicated = sorted(
        {c for c in columns if columns.count(c) > 1}
        | {c.rsplit(".", 1)[0] for c in columns if "." in c and c.rsplit(".", 1)[1].isdigit() and c.rsplit(".", 1)[0] in columns}
    )
    if duplicated:
        raise DataError(f"{source.uri}: duplicated column(s) {duplicated} in the header")
    if config.label not in columns:
        raise DataError(f"{source.uri}: the label column {config.label!r} is missing (columns: {columns})")
    features = config.features or [c for c in columns if c != config.label]
    missing = [f for f in features if f not in columns]
    if missing:
        raise DataError(f"{source.uri}: feature column(s) {missing} are missing (columns: {columns})")
    unlabeled = frame[config.label].isna().to_numpy()
    if unlabeled.any():
        first = int(np.flatnonzero(unlabeled)[0])
        raise DataError(
            f"{source.uri}: column {config.label!r} (the label) is empty in {int(unlabeled.sum())} row(s), "
            f"first at data row {first + 1}"
        )
    return features


def _list_array(series: pd.Series, kind: str):
    """A column as a pyarrow ListArray of 0 or 1 values per row (null: absent feature)."""
    import pyarrow as pa

    mask = series.isna().to_numpy()
    present = series[~mask]
    if kind == "string":
        values = pa.array(present.astype(str).tolist(), pa.binary())
    elif kind == "int":
        values = pa.array(present.to_numpy(dtype=np.int64), pa.int64())
    else:
        floats = present.to_numpy(dtype=np.float64)
        if not np.isfinite(floats).all():
            raise DataError(f"column {series.name!r} holds infinite values")
        values = pa.array(floats.astype(np.float32), pa.float32())
    offsets = np.zeros(len(series) + 1, dtype=np.int32)
    np.cumsum(~mask, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(mask))


def split_names(fractions: dict[str, float]) -> list[str]:
    """A fixed order (train, eval, then the rest by name) so assignment never depends on dict order."""
    return sorted(fractions, key=lambda s: (s != "train", s != "eval", s))


def assign_splits(frame: pd.DataFrame, fractions: dict[str, float], key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Split index and a 64-bit row hash for every row; the same rows always land the same way."""
    keys = frame[[key]] if key else frame
    hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)
    position = (hashes % np.uint64(_HASH_BUCKETS)).astype(np.float64) / _HASH_BUCKETS
    bounds = np.cumsum([fractions[name] for name in split_names(fractions)])
    bounds[-1] = 1.0
    return np.searchsorted(bounds, position, side="right"), hashes


def ingest_examples(
    config: PipelineConfig,
    sources: list[str],
    output_uri: str,
    work_dir: Path,
) -> ExamplesArtifact:
    """Read the sources, split, encode and publish the examples at ``output_uri``.

    Args:
        config: The pipeline (label, features, split, shards).
        sources: Rendered source URIs.
        output_uri: Run-scoped location to publish at (replaced on a retry).
        work_dir: Scratch space; removed on return.

    Raises:
        DataError: A source is missing, unreadable, or lacks the label or a feature column.
    """
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="ingest-"))
    try:
        resolved = resolve_sources(sources, scratch)
        frames, source_records, columns = [], [], None
        for source in resolved:
            frame = read_source(source, config.data.format)
            features = _check_columns(frame, source, config)
            wanted = [*features, config.label]
            if columns is not None and set(wanted) != set(columns):
                raise DataError(f"{source.uri}: columns differ from {resolved[0].uri}")
            columns = wanted
            frames.append(frame[wanted])
            source_records.append(
                {"uri": source.uri, "sha256": storage.sha256_file(source.local), "rows": len(frame)}
            )
        data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        kinds: dict[str, str] = {}
        arrays = []
        for name in columns:
            kinds[name] = column_kind(data[name])
            try:
                arrays.append(_list_array(data[name], kinds[name]))
            except DataError as error:
                raise DataError(f"{', '.join(s['uri'] for s in source_records)}: {error}") from None
        batch = pa.RecordBatch.from_arrays(arrays, columns)
        split_index, hashes = assign_splits(data, config.data.split, config.data.split_key)
        shard_index = (hashes >> np.uint64(32)) % np.uint64(config.data.num_shards)

        out = scratch / "examples"
        encoder = example_coder.RecordBatchToExamplesEncoder()
        counts: dict[str, int] = {}
        files: dict[str, list[str]] = {}
        for i, split in enumerate(split_names(config.data.split)):
            (out / split).mkdir(parents=True)
            files[split] = []
            counts[split] = int((split_index == i).sum())
            for shard in range(config.data.num_shards):
                rows = np.flatnonzero((split_index == i) & (shard_index == shard))
                rel = f"{split}/data-{shard:05d}-of-{config.data.num_shards:05d}.tfrecord.gz"
                with tf.io.TFRecordWriter(str(out / rel), options=COMPRESSION) as writer:
                    if len(rows):
                        for record in encoder.encode(batch.take(pa.array(rows))):
                            writer.write(record)
                files[split].append(rel)
        for split, count in counts.items():
            if count == 0:
                raise DataError(
                    f"split {split!r} received no rows out of {len(data)}: too few rows for the split fractions"
                )
        manifest = {
            "sources": source_records,
            "columns": kinds,
            "label": config.label,
            "features": columns[:-1],
            "splits": {s: {"count": counts[s], "files": files[s]} for s in counts},
            "split": {"fractions": dict(config.data.split), "key": config.data.split_key},
            "compression": COMPRESSION,
            "format": "tf.train.Example",
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        storage.publish_dir(out, output_uri)
        return ExamplesArtifact(uri=output_uri, counts=counts, columns=kinds, label=config.label)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_manifest(examples_uri: str) -> dict[str, Any]:
    """The manifest of a completely published examples artifact."""
    storage.require_complete(examples_uri)
    return json.loads(storage.read_bytes(storage.join(examples_uri, MANIFEST)))


def split_files(local_examples: Path, manifest: dict[str, Any], split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise KeyError(f"the examples have no split {split!r} (splits: {sorted(manifest['splits'])})")
    return [str(local_examples / rel) for rel in manifest["splits"][split]["files"]]
