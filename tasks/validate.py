"""validate_examples: TFDV statistics, the schema lifecycle and anomalies.

The first run of a pipeline infers a schema from the train split and records it beside the
pipeline's artifacts; every later run validates against that recorded schema. Any anomaly
in any split stops the run with a report naming each feature and what is wrong.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.ingest import read_manifest, split_files

SCHEMA_FILE = "schema.pbtxt"
STATS_FILE = "FeatureStats.pb"
TRAINING = "TRAINING"
SERVING = "SERVING"


class DataValidationError(ValueError):
    """The examples do not match the schema; ``report`` lists every anomaly."""

    def __init__(self, message: str, report: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ValidationArtifact:
    statistics_uri: str
    schema_uri: str
    anomalies_uri: str
    schema_inferred: bool
    anomalies: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_split_record_batch(local_examples: Path, manifest: dict[str, Any], split: str):
    """All examples of a split decoded to one Arrow RecordBatch (tfx-bsl's C++ decoder)."""
    import pyarrow as pa
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    records = [
        r.numpy()
        for r in tf.data.TFRecordDataset(split_files(local_examples, manifest, split), compression_type="GZIP")
    ]
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    if not records:
        return pa.RecordBatch.from_arrays([], [])
    return decoder.DecodeBatch(records)


def compute_statistics(record_batch):
    """TFDV statistics of an in-memory batch (no Beam pipeline start-up for small data)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    return stats_impl.generate_statistics_in_memory(record_batch, tfdv.StatsOptions())


def infer_schema(train_statistics, label: str):
    """Infer a schema with a label-free ``SERVING`` environment (what a served model receives)."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(train_statistics, infer_feature_shape=True)
    schema.default_environment.extend([TRAINING, SERVING])
    tfdv.get_feature(schema, label).not_in_environment.append(SERVING)
    return schema


def load_schema_text(text: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    return text_format.Parse(text, schema_pb2.Schema())


def schema_text(schema) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(schema)


def anomaly_report(split: str, anomalies) -> list[dict[str, str]]:
    """One readable row per anomaly: split, feature, what, and TFDV's explanation."""
    rows = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = [r.description for r in info.reason] or [info.description]
        rows.append(
            {
                "split": split,
                "feature": feature,
                "anomaly": info.short_description,
                "detail": " ".join(reasons),
                "severity": _severity_name(info.severity),
            }
        )
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        rows.append(
            {
                "split": split,
                "feature": "(dataset)",
                "anomaly": info.short_description,
                "detail": info.description,
                "severity": _severity_name(info.severity),
            }
        )
    return rows


def _severity_name(value: int) -> str:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    return anomalies_pb2.AnomalyInfo.Severity.Name(value)


def format_report(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "no anomalies"
    header = ("split", "feature", "anomaly", "detail")
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in header[:-1]]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header[:-1], widths)) + "  detail"]
    for row in rows:
        lines.append("  ".join(row[h].ljust(w) for h, w in zip(header[:-1], widths)) + "  " + row["detail"])
    return "\n".join(lines)


def statistics_html(statistics) -> str | None:
    """TFDV's statistics visualization (Facets) as a standalone HTML page."""
    try:
        from tensorflow_data_validation.utils import display_util
    except ImportError:  # pragma: no cover - visualization extras missing
        return None
    return display_util.get_statistics_html(statistics)


def validate_examples(
    examples_uri: str,
    statistics_uri: str,
    anomalies_uri: str,
    recorded_schema_uri: str,
    label: str,
    cache_dir: Path,
    work_dir: Path,
) -> ValidationArtifact:
    """Compute statistics per split, settle the schema and check every split against it.

    The statistics, the schema used and the anomalies are published even when validation
    fails, so the report can be read; the exception stops everything downstream.

    Raises:
        DataValidationError: Some split has anomalies against the schema.
    """
    manifest = read_manifest(examples_uri)
    local_examples = storage.materialize(examples_uri, cache_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="validate-"))
    try:
        stats_dir, anomalies_dir = scratch / "statistics", scratch / "anomalies"
        statistics = {}
        for split in manifest["splits"]:
            statistics[split] = compute_statistics(read_split_record_batch(local_examples, manifest, split))
            (stats_dir / split).mkdir(parents=True)
            (stats_dir / split / STATS_FILE).write_bytes(statistics[split].SerializeToString())
            html = statistics_html(statistics[split])
            if html:
                (stats_dir / split / "statistics.html").write_text(html, encoding="utf-8")

        inferred = not storage.exists(recorded_schema_uri)
        if inferred:
            schema = infer_schema(statistics["train"], label)
        else:
            schema = load_schema_text(storage.read_bytes(recorded_schema_uri).decode("utf-8"))
        (stats_dir / SCHEMA_FILE).write_text(schema_text(schema))

        import tensorflow_data_validation as tfdv

        report: list[dict[str, str]] = []
        for split, stats in statistics.items():
            anomalies = tfdv.validate_statistics(stats, schema, environment=TRAINING)
            (anomalies_dir / split).mkdir(parents=True)
            (anomalies_dir / split / "anomalies.pbtxt").write_text(schema_text(anomalies))
            report.extend(anomaly_report(split, anomalies))
        (anomalies_dir / "report.json").write_text(json.dumps(report, indent=2))
        (anomalies_dir / "report.txt").write_text(format_report(report) + "\n")

        storage.publish_dir(stats_dir, statistics_uri)
        storage.publish_dir(anomalies_dir, anomalies_uri)
        if report:
            raise DataValidationError(
                f"{len(report)} anomal{'y' if len(report) == 1 else 'ies'} in {examples_uri} "
                f"against the schema {recorded_schema_uri}:\n{format_report(report)}",
                report,
            )
        if inferred:
            # Recorded only from data that passed, so a bad first run cannot poison later ones.
            storage.write_bytes(recorded_schema_uri, schema_text(schema).encode("utf-8"))
        return ValidationArtifact(
            statistics_uri=statistics_uri,
            schema_uri=storage.join(statistics_uri, SCHEMA_FILE),
            anomalies_uri=anomalies_uri,
            schema_inferred=inferred,
            anomalies=len(report),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_statistics(statistics_uri: str, split: str, cache_dir: Path):
    from tensorflow_metadata.proto.v0 import statistics_pb2

    local = storage.materialize(statistics_uri, cache_dir)
    return statistics_pb2.DatasetFeatureStatisticsList.FromString((local / split / STATS_FILE).read_bytes())


def load_schema(statistics_uri: str, cache_dir: Path):
    local = storage.materialize(statistics_uri, cache_dir)
    return load_schema_text((local / SCHEMA_FILE).read_text())
