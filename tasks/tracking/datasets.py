"""The data a run reads, as MLflow dataset inputs: the runs table's Dataset column and the
dataset pages of the MLflow UI.

One dataset per examples artifact, described from its manifest (:mod:`tasks.ingest`): named
after the pipeline, its digest derived from the digests of the source files (so the same data
has the same digest in every run, and changed data a new one), its source the source URIs, its
schema the columns as MLflow column specs, and its profile the counts. The context tag says
what the run did with it: ``source`` (ingest), ``validation``, ``training``, ``evaluation``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

_COLUMN_TYPES = {"int": "long", "float": "double", "string": "string"}
_SOURCE_TYPES = {"s3": "s3", "http": "http", "https": "http", "gs": "gcs", "gcs": "gcs"}


def data_digest(manifest: Mapping[str, Any]) -> str:
    """A digest of the source files' contents, in source order (16 hex digits)."""
    joined = "\n".join(f"{s['uri']} {s['sha256']}" for s in manifest["sources"])
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def _source(uris: list[str]) -> tuple[str, str]:
    scheme = urlparse(uris[0]).scheme if "://" in uris[0] else "local"
    source_type = _SOURCE_TYPES.get(scheme, "local" if scheme in ("file", "package", "local") else scheme)
    return source_type, json.dumps({"uri": uris[0]} if len(uris) == 1 else {"uris": uris})


def dataset_input(manifest: Mapping[str, Any], name: str, context: str):
    """The MLflow ``DatasetInput`` of the examples whose manifest is ``manifest``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    uris = [s["uri"] for s in manifest["sources"]]
    source_type, source = _source(uris)
    schema = {"mlflow_colspec": [{"name": column, "type": _COLUMN_TYPES.get(kind, "string"), "required": False}
                                 for column, kind in manifest["columns"].items()]}
    profile = {"num_rows": manifest["rows"], "num_sources": len(uris),
               **{f"{split}_examples": part["count"] for split, part in manifest["splits"].items()}}
    dataset = Dataset(name=name, digest=data_digest(manifest), source_type=source_type, source=source,
                      schema=json.dumps(schema), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
