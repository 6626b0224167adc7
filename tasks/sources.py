"""Reading the sources: CSV and Parquet files (local, ``s3://``, ``package://``, or on a filesystem
fsspec reaches: ``gs://``, ``abfs://``, ``https://``, ``hdfs://``; :mod:`tasks.filesystems`) as streams of
Arrow record batches, with errors that name the file, the column, the row and the value.

Column kinds (``int``, ``float``, ``string``) are what a column becomes in a ``tf.train.Example``.
An inferred integer column that later holds fractions raises :class:`Widen`, and ingest
starts over with the column as float.
"""

from __future__ import annotations

import glob
import importlib.resources
import re
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa

from tasks import storage
from tasks.errors import DataError
from tasks.filesystems import SCHEMES, is_remote_source, scheme_of
from tasks.filesystems import matches as remote_matches

ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
CSV_BLOCK_BYTES = 4 << 20
_PARQUET_BATCH_ROWS = 65_536


class Widen(Exception):
    """An inferred column type must widen (int to float, or a first type for an all-null start)."""

    def __init__(self, column: str, kind: str, reason: str) -> None:
        super().__init__(f"column {column!r} becomes {kind}: {reason}")
        self.column, self.kind, self.reason = column, kind, reason


@dataclass(frozen=True)
class SourceFile:
    uri: str
    local: Path | None = None  # None: fetched from S3 when read


# A source may name the run's date or id, and nothing else: the substitution is textual, so no
# string (from a YAML or from a trigger form) is ever evaluated as a template or as code.
TEMPLATE_VARIABLES = ("ds", "ds_nodash", "run_id")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEMPLATE_MARKS = ("{{", "}}", "{%", "%}", "{#", "#}")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:+-]*$")


def check_template(source: str) -> None:
    """Raise unless every template in ``source`` is one of :data:`TEMPLATE_VARIABLES`."""
    for name in _VARIABLE.findall(source):
        if name not in TEMPLATE_VARIABLES:
            raise DataError(f"data source {source!r}: unknown variable {{{{ {name} }}}}; a source may use "
                            + ", ".join(f"{{{{ {v} }}}}" for v in TEMPLATE_VARIABLES) + " only")
    rest = _VARIABLE.sub("", source)
    if any(mark in rest for mark in _TEMPLATE_MARKS):
        raise DataError(f"data source {source!r}: only {{{{ ds }}}}, {{{{ ds_nodash }}}} and {{{{ run_id }}}} are "
                        "substituted; no other template syntax is allowed")


def render_sources(sources: list[str], variables: dict[str, str]) -> list[str]:
    """Put the run's values in place of ``{{ ds }}``, ``{{ ds_nodash }}`` and ``{{ run_id }}``.

    Raises:
        DataError: Other template syntax, or a value that is not a plain name (``/``, ``..``).
    """
    rendered = []
    for source in sources:
        check_template(source)

        def value(match: re.Match, source: str = source) -> str:
            found = str(variables.get(match.group(1), ""))
            if not found or not _SAFE_VALUE.match(found) or ".." in found:
                raise DataError(f"data source {source!r}: {{{{ {match.group(1)} }}}} is {found!r} for this run, "
                                "which cannot be part of a path")
            return found

        rendered.append(_VARIABLE.sub(value, source))
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
        elif storage.is_s3(uri) or is_remote_source(uri):  # listed and globbed by fsspec (tasks/filesystems.py)
            files.extend(SourceFile(m) for m in remote_matches(uri))
        elif scheme_of(uri) not in (None, "file"):
            raise DataError(f"data source {uri}: {scheme_of(uri)}:// is not a source tfpipe reads (local paths, "
                            f"file://, s3://, package://, or {', '.join(f'{s}://' for s in SCHEMES)})")
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
    name = (urlparse(source.uri).path if scheme_of(source.uri) else source.uri).lower()  # no query string
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
class Reader:
    """One open source: its column names and a stream of record batches."""

    names: list[str]
    types: dict[str, pa.DataType]
    batches: Iterator[pa.RecordBatch]


def _open_csv(path: Path, uri: str, kinds: Mapping[str, str | None], declared: frozenset[str],
              delimiter: str = ",") -> Reader:
    import pyarrow.csv as pacsv

    # An int column is read as float64 and cast, so "181.0" (as pandas writes ints with gaps) is 181
    # while 181.5 is an error naming the row; one written as True/False (a boolean) is read as one.
    booleans = _boolean_columns(path, [n for n, k in kinds.items() if k == "int"], delimiter)
    column_types = {name: (pa.bool_() if name in booleans else pa.float64()) if kind == "int" else ARROW_TYPES[kind]
                    for name, kind in kinds.items() if kind}
    try:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
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

    return Reader(names, types, batches())


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
                             f"(data row {_first_row(path, name, pa.binary(), not_utf8, delimiter) or '?'})")
        return DataError(f"{uri}: the file is not valid UTF-8 text ({text})")
    if not match or names is None:
        return DataError(f"{uri}: cannot parse as CSV: {text}")
    column = names[int(match.group(1))]
    target, value = match.group(2), match.group(3)
    value_kind = _kind_of_text(value)
    if column not in declared:
        if target == "null":
            return Widen(column, value_kind, f"{uri} holds {value!r} after empty rows")
        if target == "int64" and value_kind == "float":
            return Widen(column, "float", f"{uri} holds {value!r}")
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
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
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


def not_utf8(value: bytes) -> UnicodeDecodeError | None:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        return error
    return None


def _open_parquet(path: Path, uri: str) -> Reader:
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

    return Reader(names, {f.name: f.type for f in schema}, batches())


# --- checking and splitting one batch ------------------------------------------------------

def open_source(source: SourceFile, local: Path, data_format: str, kinds: Mapping[str, str | None],
                declared: frozenset[str], delimiter: str = ",") -> Reader:
    if _format_of(source, data_format) == "parquet":
        return _open_parquet(local, source.uri)
    return _open_csv(local, source.uri, kinds, declared, delimiter)


def did_you_mean(name: str, names: list[str]) -> str | None:
    """The column a misspelt ``name`` most likely means: spaces around it, another case, a near spelling."""
    import difflib

    padded = [n for n in names if n != name and n.strip() == name.strip()]
    if padded:
        return padded[0]
    folded = [n for n in names if n.strip().lower() == name.strip().lower()]
    if folded:
        return folded[0]
    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    return next((n for n in names if n.lower() == close[0]), None) if close else None


def missing_column_hint(name: str, names: list[str]) -> str:
    """Why ``name`` may not be among ``names``, as a clause to append to an error (or "")."""
    if len(names) == 1:  # one column: maybe another delimiter
        found = [d for d in (";", "\t", "|") if d in names[0]]
        if found:
            return f"; the header looks {found[0]!r}-delimited: set data.delimiter"
    near = did_you_mean(name, names)
    if near is None:
        return ""
    if near.strip() == name.strip():
        return f"; {near!r} has spaces around its name"
    return f"; did you mean {near!r}?"


def label_missing(uri: str, label: str, names: list[str]) -> DataError:
    return DataError(f"{uri}: the label column {label!r} is missing (columns: {names})"
                     f"{missing_column_hint(label, names)}")
