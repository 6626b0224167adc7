"""validate_examples: TFDV statistics, the schema lifecycle, drift and skew, anomalies.

Statistics come from :mod:`tasks.statistics` (TFDV's generators, streamed; or TFDV's Beam
pipeline with ``engine: beam``).

The schema: a curated ``<pipeline>.schema.pbtxt`` beside the pipeline config is
authoritative; without one, the first run whose data passes records an inferred schema and
every later run validates against it. Drift compares the train split with the last run whose
data passed, skew the eval split with the train split. Any anomaly stops the run with a
report that names each feature, the anomaly, and what was expected and observed.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.anomalies import Where, checked_schema, compare, distance_rows, format_report, schema_rows
from tasks.config import ValidateConfig
from tasks.errors import UserError
from tasks.artifacts import (ANOMALIES_REPORT, OVERVIEW_FILE, SCHEMA_FILE, STATS_FILE, Examples, ValidationArtifact,
                             split_files)
from tasks.statistics import compute_statistics

log = logging.getLogger(__name__)

TRAINING = "TRAINING"
SERVING = "SERVING"


class DataValidationError(UserError):
    """The examples do not match the schema; ``report`` lists every anomaly."""

    def __init__(self, message: str, report: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.report = report


# --- schema ----------------------------------------------------------------------------------

def infer_schema(train_statistics, label: str):
    """Infer a schema with a label-free ``SERVING`` environment (what a served model receives)."""
    import tensorflow_data_validation as tfdv

    # No inferred shape: a column present in every train example would then be required in
    # every later example, and one missing value (which the model imputes) would stop a run.
    schema = tfdv.infer_schema(train_statistics, infer_feature_shape=False)
    return ensure_environments(schema, label)


def ensure_environments(schema, label: str):
    """``TRAINING`` and ``SERVING`` environments, the label absent from ``SERVING``."""
    import tensorflow_data_validation as tfdv

    for env in (TRAINING, SERVING):
        if env not in schema.default_environment:
            schema.default_environment.append(env)
    try:
        feature = tfdv.get_feature(schema, label)
    except ValueError:
        return schema
    if SERVING not in feature.not_in_environment:
        feature.not_in_environment.append(SERVING)
    return schema


def load_schema_text(text: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(text, schema_pb2.Schema())


def schema_text(schema) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(schema)


def column_types(schema) -> dict[str, str]:
    """Column kinds a schema prescribes: INT to int, FLOAT to float, BYTES to string."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    names = {schema_pb2.INT: "int", schema_pb2.FLOAT: "float", schema_pb2.BYTES: "string"}
    return {f.name: names[f.type] for f in schema.feature if f.type in names}


def statistics_html(statistics, baseline=None) -> str | None:
    """TFDV's statistics visualization (Facets) as a standalone HTML page."""
    try:
        from tensorflow_data_validation.utils import display_util
    except ImportError:  # pragma: no cover - visualization extras missing
        return None
    if baseline is not None:
        return display_util.get_statistics_html(statistics, baseline, lhs_name="this run", rhs_name="baseline")
    return display_util.get_statistics_html(statistics)


def statistics_overview_html(statistics, title: str) -> str:
    """The statistics as one self-contained HTML page (no script, nothing fetched): a row per
    feature with its counts, its distribution as an inline SVG histogram or its top values.

    TFDV's Facets page loads its components from the internet; this one opens anywhere,
    the MLflow UI's artifact preview on an offline machine included.
    """
    import html

    dataset = statistics.datasets[0]
    total = max(int(dataset.num_examples), 1)

    def bars(heights: list[float], labels: list[str]) -> str:
        top = max(heights, default=0.0) or 1.0  # a split where a column has no value at all
        width = 180 / max(len(heights), 1)
        rects = "".join(
            f'<rect x="{i * width:.1f}" y="{40 - 38 * h / top:.1f}" width="{max(width - 1, 1):.1f}" '
            f'height="{38 * h / top:.1f}"><title>{html.escape(label)}: {h:g}</title></rect>'
            for i, (h, label) in enumerate(zip(heights, labels)))
        return f'<svg width="180" height="40" role="img">{rects}</svg>'

    rows = []
    for feature in dataset.features:
        name = html.escape(".".join(feature.path.step) or feature.name)
        kind = feature.WhichOneof("stats")
        if kind == "num_stats":
            stats = feature.num_stats
            common = stats.common_stats
            buckets = [b for h in stats.histograms if h.type == h.STANDARD for b in h.buckets][:30]
            chart = bars([b.sample_count for b in buckets], [f"{b.low_value:.4g} to {b.high_value:.4g}" for b in buckets])
            summary = (f"mean {stats.mean:.4g}, std {stats.std_dev:.4g}, min {stats.min:.4g}, median "
                       f"{stats.median:.4g}, max {stats.max:.4g}, zeros {int(stats.num_zeros)}")
        elif kind == "string_stats":
            stats = feature.string_stats
            common = stats.common_stats
            top = list(stats.top_values)[:10]
            chart = bars([t.frequency for t in top], [t.value for t in top])
            summary = f"{int(stats.unique)} unique; top: " + ", ".join(
                f"{html.escape(t.value)} ({int(t.frequency)})" for t in top[:5])
        else:
            continue
        missing = int(common.num_missing)
        type_name = feature.Type.Name(feature.type).lower()  # int, float, string, bytes, struct
        rows.append(f"<tr><td class=name>{name}</td><td>{html.escape(type_name)}</td>"
                    f"<td>{int(common.num_non_missing)}</td><td>{missing} ({100 * missing / total:.1f}%)</td>"
                    f"<td>{chart}</td><td>{summary}</td></tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;font-size:13px;vertical-align:middle}}
.name{{font-weight:bold}}rect{{fill:#4e79a7}}</style></head>
<body><h2>{html.escape(title)}</h2><p>{int(dataset.num_examples)} examples, {len(rows)} features
(TFDV statistics).</p>
<table><tr><th>feature</th><th>type</th><th>present</th><th>missing</th><th>distribution</th><th>summary</th></tr>
{"".join(rows)}
</table></body></html>
"""


# --- the step --------------------------------------------------------------------------------

def validate_examples(
    examples_uri: str,
    statistics_uri: str,
    anomalies_uri: str,
    recorded_schema_uri: str,
    label: str,
    cache_dir: Path,
    work_dir: Path,
    config: ValidateConfig | None = None,
    curated_schema: Path | None = None,
    baseline_uri: str | None = None,
    run_id: str = "",
    pipeline: str = "",
) -> ValidationArtifact:
    """Compute statistics per split, settle the schema and check every split (tasks/anomalies.py).

    Args:
        curated_schema: A checked-in schema; authoritative when it exists.
        baseline_uri: Pointer (JSON) to the statistics of the last run that passed validation
            and training (:func:`record_passing_run` sets it once training has succeeded).
        pipeline: The pipeline's name, for the hints of the report.

    The statistics, the schema used and the anomalies are published even when validation
    fails, so the report can be read; the exception stops everything downstream. Nothing is
    recorded here: a run that fails later (in training) must not leave its schema behind.

    Raises:
        DataValidationError: Some split has anomalies against the schema, or a distribution moved.
    """
    config = config or ValidateConfig()
    started = time.perf_counter()
    examples = Examples.open(examples_uri)
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="validate-"))
    try:
        stats_dir, anomalies_dir = scratch / "statistics", scratch / "anomalies"
        baseline = _read_baseline(baseline_uri, run_id, cache_dir)
        statistics = _split_statistics(examples, cache_dir, scratch, config, baseline, stats_dir, statistics_uri)
        source, schema = _schema_in_force(statistics["train"], label, curated_schema, recorded_schema_uri)
        (stats_dir / SCHEMA_FILE).write_text(schema_text(schema))
        where = Where(pipeline, source, str(curated_schema or ""))
        report = _check(statistics, schema, where, config, baseline)
        anomalies_dir.mkdir(parents=True)
        (anomalies_dir / ANOMALIES_REPORT).write_text(json.dumps(report, indent=2))
        (anomalies_dir / "report.txt").write_text(format_report(report) + "\n")
        storage.publish_dir(stats_dir, statistics_uri)
        storage.publish_dir(anomalies_dir, anomalies_uri)
        if report:
            raise DataValidationError(
                f"{len(report)} anomal{'y' if len(report) == 1 else 'ies'} in {examples_uri} (schema: {source}"
                f"{f' {curated_schema}' if source == 'curated' else ''}):\n{format_report(report)}",
                report,
            )
        return ValidationArtifact(
            statistics_uri=statistics_uri,
            schema_uri=storage.join(statistics_uri, SCHEMA_FILE),
            anomalies_uri=anomalies_uri,
            schema_source=source,
            anomalies=0,
            baseline_run=baseline[0] if baseline else None,
            seconds=round(time.perf_counter() - started, 3),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _remote_beam_statistics(examples: Examples, split: str, config: ValidateConfig, statistics_uri: str):
    """Beam's statistics of examples on S3: the runner's workers read the shards and write the
    result on S3 themselves (beside the statistics artifact, removed once read back)."""
    from tasks.statistics import beam_statistics

    folders = {rel.rsplit("/", 1)[0] for rel in examples.manifest["splits"][split]["files"]}
    if len(folders) != 1:
        raise ValueError(f"the {split} shards of {examples.uri} are not in one folder: {sorted(folders)}")
    output = storage.join(statistics_uri.rstrip("/") + ".beam", split)
    try:
        return beam_statistics(storage.join(examples.uri, folders.pop(), "*.tfrecord.gz"),
                               storage.join(output, "statistics.tfrecord"), config.beam_pipeline_args)
    finally:
        storage.delete_dir(output)


def _split_statistics(examples: Examples, cache_dir: Path, scratch: Path, config: ValidateConfig, baseline,
                      stats_dir: Path, statistics_uri: str) -> dict[str, Any]:
    """Each split's statistics, written with its two pages into ``stats_dir``."""
    statistics = {}
    for split in examples.splits:
        started = time.perf_counter()
        if config.engine == "beam" and storage.is_s3(examples.uri):
            statistics[split] = _remote_beam_statistics(examples, split, config, statistics_uri)
        else:
            statistics[split] = compute_statistics(examples.files(split, cache_dir), scratch, config.engine,
                                                   config.beam_pipeline_args, examples.columns)
        log.info("statistics of %s (%d examples) in %.2fs", split, examples.count(split),
                 time.perf_counter() - started)
        (stats_dir / split).mkdir(parents=True)
        (stats_dir / split / STATS_FILE).write_bytes(statistics[split].SerializeToString())
        html = statistics_html(statistics[split], baseline[1].get(split) if baseline else None)
        if html:
            (stats_dir / split / "statistics.html").write_text(html, encoding="utf-8")
        (stats_dir / split / OVERVIEW_FILE).write_text(
            statistics_overview_html(statistics[split], f"Statistics of the {split} split"), encoding="utf-8")
    return statistics


def _schema_in_force(train_statistics, label: str, curated: Path | None, recorded_uri: str):
    """(source, schema): the curated schema, else the recorded one, else one inferred from train."""
    if curated is not None and curated.is_file():
        try:
            return "curated", ensure_environments(load_schema_text(curated.read_text(encoding="utf-8")), label)
        except Exception as error:  # noqa: BLE001 - a broken curated schema is a config error
            raise ValueError(f"curated schema {curated} cannot be parsed: {error}") from None
    if storage.exists(recorded_uri):
        return "recorded", load_schema_text(storage.read_bytes(recorded_uri).decode("utf-8"))
    return "inferred", infer_schema(train_statistics, label)


def _check(statistics: dict[str, Any], schema, where: Where, config: ValidateConfig, baseline) -> list[dict]:
    """Every split against the schema, eval against train, train against the last passing run."""
    import tensorflow_data_validation as tfdv

    report: list[dict[str, str]] = []
    previous = baseline[1].get("train") if baseline else None
    for split, stats in statistics.items():
        checked = checked_schema(schema, where.schema_source, config, statistics["train"],
                                 stats.datasets[0].num_examples)
        kwargs: dict[str, Any] = {}
        if split == "train" and previous is not None:
            kwargs["previous_statistics"] = previous
        if split == "train" and "eval" in statistics:
            kwargs["serving_statistics"] = statistics["eval"]
        anomalies = tfdv.validate_statistics(stats, checked, environment=TRAINING, **kwargs)
        report.extend(schema_rows(split, anomalies, checked, stats, where, config))
    for split, stats in statistics.items():
        if split != "train":
            report.extend(distance_rows(split, f"{split} against train", "validation.skew",
                                        compare(stats, statistics["train"], config.skew, config.significance)))
    if previous is not None:
        report.extend(distance_rows("train", f"train against the train split of run {baseline[0]}",
                                    "validation.drift",
                                    compare(statistics["train"], previous, config.drift, config.significance)))
    return report


def record_passing_run(statistics_uri: str, schema_source: str, recorded_schema_uri: str, baseline_uri: str | None,
                       run_id: str) -> bool:
    """After a run passed validation *and* training: record its inferred schema (enforced from
    then on) and make its statistics the baseline of the next run's drift check. Returns
    whether a schema was recorded."""
    recorded = False
    if schema_source == "inferred" and not storage.exists(recorded_schema_uri):
        storage.write_bytes(recorded_schema_uri, storage.read_bytes(storage.join(statistics_uri, SCHEMA_FILE)))
        recorded = True
    if baseline_uri:
        storage.write_bytes(baseline_uri, json.dumps({"run_id": run_id, "statistics_uri": statistics_uri}).encode())
    return recorded


def reset_recorded(recorded_schema_uri: str, baseline_uri: str) -> list[str]:
    """Discard the recorded schema and the drift baseline (``tfpipe schema NAME --reset``)."""
    removed = []
    for uri in (recorded_schema_uri, baseline_uri):
        if storage.exists(uri):
            storage.delete_file(uri)
            removed.append(uri)
    return removed


def _read_baseline(baseline_uri: str | None, run_id: str, cache_dir: Path):
    """(run id, split -> statistics) of the last run whose data passed, if any and not this run."""
    if not baseline_uri or not storage.exists(baseline_uri):
        return None
    pointer = json.loads(storage.read_bytes(baseline_uri))
    if pointer.get("run_id") == run_id:
        return None  # a retry of the run that set it: compare with nothing rather than itself
    try:
        local = storage.materialize(pointer["statistics_uri"], cache_dir)
    except storage.ArtifactNotFoundError:
        log.warning("baseline statistics %s are gone; drift is not checked", pointer["statistics_uri"])
        return None
    from tensorflow_metadata.proto.v0 import statistics_pb2

    splits = {}
    for split_dir in local.iterdir():
        if (split_dir / STATS_FILE).is_file():
            splits[split_dir.name] = statistics_pb2.DatasetFeatureStatisticsList.FromString(
                (split_dir / STATS_FILE).read_bytes()
            )
    return pointer.get("run_id"), splits


def load_statistics(statistics_uri: str, split: str, cache_dir: Path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    local = storage.materialize(statistics_uri, cache_dir)
    return statistics_pb2.DatasetFeatureStatisticsList.FromString((local / split / STATS_FILE).read_bytes())


def load_schema(statistics_uri: str, cache_dir: Path):
    local = storage.materialize(statistics_uri, cache_dir)
    return load_schema_text((local / SCHEMA_FILE).read_text())


def read_split_record_batch(local_examples: Path, manifest: dict[str, Any], split: str):
    """All examples of a split decoded into one Arrow record batch (tests and small data)."""
    from tasks.statistics import iter_record_batches, one_batch

    return one_batch(iter_record_batches(split_files(local_examples, manifest, split), manifest["columns"]))
