"""``tfpipe check``: the config, then a sample of the data, before anything runs.

The sample is the first rows of the first source (when it can be reached): the sources must
exist, the label and the features must be columns (with a guess at what a misspelt name
meant), the label's values must fit the task (a "binary" label with three values, a
regression target written as text), and the columns must agree with the schema in force.
Nothing heavy is imported: no TensorFlow, no TFDV.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow as pa

from tasks.config import PipelineConfig
from tasks.errors import DataError
from tasks.labels import LabelScan
from tasks.sources import kind_of, missing_column_hint, open_source, render_sources, resolve_sources

SAMPLE_ROWS = 10_000


@dataclass(frozen=True)
class Finding:
    """One line of the check: ``ok``, ``note`` (worth knowing) or ``problem`` (the run would fail)."""

    level: str
    text: str


def _sample(config: PipelineConfig, scratch: Path) -> tuple[str, list[str], pa.Table, bool, list[Finding]]:
    """(uri, column names, the first rows, whether they are the whole file, notes) of the first source."""
    found = []
    variables = {"ds": date.today().isoformat(), "ds_nodash": date.today().strftime("%Y%m%d"), "run_id": "check"}
    sources = render_sources(config.data.source, variables)
    if sources != config.data.source:
        found.append(Finding("note", f"templated sources rendered for today ({variables['ds']}): {sources}"))
    files = resolve_sources(sources)
    found.append(Finding("ok", f"{len(files)} source file(s): {', '.join(f.uri for f in files[:3])}"
                               f"{' ...' if len(files) > 3 else ''}"))
    first = files[0]
    if first.local is None:
        from tasks import storage

        local = storage.download_file(first.uri, scratch / f"sample-{Path(first.uri).name}")
    else:
        local = first.local
    reader = open_source(first, local, config.data.format, dict(config.data.column_types),
                         frozenset(config.data.column_types), config.data.delimiter)
    batches, rows, whole = [], 0, True
    for batch in reader.batches:
        batches.append(batch)
        rows += batch.num_rows
        if rows >= SAMPLE_ROWS:
            whole = False
            break
    table = pa.Table.from_batches(batches) if batches else pa.table({n: pa.array([]) for n in reader.names})
    return first.uri, reader.names, table.slice(0, SAMPLE_ROWS), whole and rows <= SAMPLE_ROWS, found


def _columns(config: PipelineConfig, uri: str, names: list[str]) -> list[Finding]:
    found = []
    if config.label not in names:
        found.append(Finding("problem", f"{uri}: the label column {config.label!r} is missing (columns: {names})"
                                        f"{missing_column_hint(config.label, names)}"))
    for column in config.features or []:
        if column not in names:
            found.append(Finding("problem", f"{uri}: the feature {column!r} (features) is missing"
                                            f"{missing_column_hint(column, names)}"))
    key = config.data.split_key
    if key and key not in names:
        found.append(Finding("problem", f"{uri}: the split key {key!r} (data.split_key) is missing"
                                        f"{missing_column_hint(key, names)}"))
    if not found:
        found.append(Finding("ok", f"columns: the label {config.label!r} and "
                                   f"{len(config.features or [n for n in names if n != config.label])} feature(s)"))
    return found


def _label(config: PipelineConfig, uri: str, table: pa.Table, whole: bool) -> list[Finding]:
    """The label's values in the sample against the task, as ingest will judge them."""
    column = table.column(config.label).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    labelled = column.drop_null()
    where = f"{uri} ({'all' if whole else 'the first'} {len(column)} rows)"
    found = []
    if len(labelled) < len(column):
        share = 1 - len(labelled) / max(len(column), 1)
        level = "problem" if share > config.data.max_unlabeled_fraction else "note"
        found.append(Finding(level, f"{where}: the label is empty in {len(column) - len(labelled)} rows ({share:.1%}); "
                                    f"such rows are dropped, up to data.max_unlabeled_fraction "
                                    f"({config.data.max_unlabeled_fraction:g})"))
    kind = config.data.column_types.get(config.label) or kind_of(labelled.type) or "string"
    task = config.task.value
    if task == "regression" and kind == "string":
        return found + [Finding("problem", f"{where}: the label {config.label!r} holds text (e.g. "
                                           f"{labelled[0].as_py()!r}); task regression needs numbers: use task: "
                                           f"binary or multiclass")]
    if task == "multiclass" and kind == "int" and config.label not in config.data.column_types:
        kind, labelled = "string", labelled.cast(pa.string())
    scan = LabelScan(config.label, task)
    try:
        scan.strata(labelled, uri)
        plan = scan.settle(kind, config.data.column_types.get(config.label), where)
    except DataError as error:
        partial = not whole and ("in every row" in str(error))
        return found + [Finding("note" if partial else "problem", str(error)
                                + ("; ingest checks every row" if partial else ""))]
    return found + [Finding("ok", _describe_label(config, plan, kind))]


def _describe_label(config: PipelineConfig, plan, kind: str) -> str:
    if not plan.classes:
        return f"label {config.label!r}: numbers, task regression"
    names = plan.class_names
    text = f"label {config.label!r}: {len(names)} classes ({', '.join(names[:10])}{' ...' if len(names) > 10 else ''})"
    if config.task.value == "binary":
        text += f"; positive class {names[1]!r}"
        if plan.names:
            text += " (numbers other than 0 and 1, written as class names)"
    return text


def _schema(config: PipelineConfig, table: pa.Table, schema: tuple[dict[str, str], str, str] | None,
            pipeline: str) -> list[Finding]:
    """Columns whose values in the sample cannot take the type the schema in force prescribes.

    ``schema``: (column types, ``curated`` or ``recorded``, where it is), or None without one.
    """
    if schema is None:
        return []
    types, source, location = schema
    fix = f"edit {location}" if source == "curated" else f"discard it: tfpipe schema {pipeline} --reset"
    found = []
    for name, prescribed in sorted(types.items()):
        if name not in table.column_names or name in config.data.column_types:
            continue
        if kind_of(table.column(name).type) == "string" and prescribed in ("int", "float"):
            found.append(Finding("problem", f"column {name!r} holds text but the {source} schema ({location}) says "
                                            f"{prescribed}: if the data changed on purpose, {fix}"))
    if not found:
        found.append(Finding("ok", f"the sample's columns agree with the {source} schema ({location})"))
    return found


def check_data(config: PipelineConfig, schema: tuple[dict[str, str], str, str] | None,
               pipeline: str) -> list[Finding]:
    """Every data check on a sample of the first source; an unreachable source is a note, not a problem."""
    with tempfile.TemporaryDirectory(prefix="tfpipe-check-") as scratch:
        try:
            uri, names, table, whole, found = _sample(config, Path(scratch))
        except DataError as error:
            return [Finding("problem", str(error))]
        except Exception as error:  # noqa: BLE001 - S3 credentials, network: the data cannot be reached here
            return [Finding("note", f"the data could not be reached, so only the config was checked: "
                                    f"{type(error).__name__}: {error}")]
    found += _columns(config, uri, names)
    if config.label in names and table.num_rows:
        found += _label(config, uri, table, whole)
    return found + _schema(config, table, schema, pipeline)


def format_findings(findings: list[Finding]) -> str:
    marks = {"ok": "ok     ", "note": "note   ", "problem": "PROBLEM"}
    return "\n".join(f"  {marks[f.level]}  {f.text}" for f in findings)
