"""Unchanged steps skipped (``cache: true``): a step whose inputs equal those of an earlier
successful run reuses that run's record, and so its artifacts, instead of computing them again.

A step's **key** is a SHA-256 of everything it reads:

* the code: tfpipe's own source files, and the versions of TensorFlow, TFDV and MLflow;
* the config sections it reads, after overrides and trigger params (:data:`SECTIONS`);
* the records of the steps it takes (their artifacts' URIs: a reused step passes its earlier
  record on, so the steps after it can be reused too; validation by the content of its schema
  and statistics, evaluation by its verdict only); ingest, which takes none, reads its sources'
  contents (SHA-256 of local files, the ETag, size and time of remote objects);
* what else decides its result: validate's schema and drift baseline, evaluate's champion
  (version and generation), a ``train.model_fn`` file.

Keys are kept at ``<artifact_root>/<pipeline>/cache/<step>/<key>.json`` with the record and the
run that made it, written only once the step succeeded. A key is used only if every artifact its
record names is still complete. ``push_model`` is never reused: it is the release (a model
identical to the champion is not pushed again, see ``push.skip_identical``).

Off by default: a key cannot see everything a step may depend on (a ``model_fn``'s own imports,
the machine it trained on), and a reused model is not a new sample of a non-deterministic
training. Turn it on per pipeline (``cache: true``) or per run (``--set cache=true``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.context import RunContext

log = logging.getLogger(__name__)

SECTIONS = {
    "ingest_examples": ("data", "label", "task", "features"),
    "validate_examples": ("validation", "label", "task", "features"),
    "train_model": ("train", "label", "task", "features"),
    "evaluate_model": ("gate", "label", "task", "model_name"),
    "optimize_model": ("optimize", "train", "task"),
}
CACHEABLE = tuple(SECTIONS)


@lru_cache(maxsize=1)
def code_digest() -> str:
    """tfpipe's source files and the versions of the libraries that compute the artifacts."""
    from importlib import metadata

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    for package in ("tensorflow", "tensorflow-data-validation", "mlflow"):
        try:
            digest.update(f"{package}=={metadata.version(package)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package}: none\0".encode())
    return digest.hexdigest()


def _file_digest(uri: str) -> str:
    if storage.is_s3(uri):
        bucket, key = storage.split_s3(uri)
        head = storage.s3_client().head_object(Bucket=bucket, Key=key)
        return f"{head['ETag']}:{head['ContentLength']}:{head['LastModified'].isoformat()}"
    path = storage.local_path(uri)
    return storage.sha256_file(path) if path.is_file() else "absent"


def _sources_digest(ctx: RunContext) -> list[list[str]]:
    """Each source file and its contents' digest (remote files: the store's ETag, size and time)."""
    from tasks.filesystems import fingerprint
    from tasks.sources import render_sources, resolve_sources

    variables = {"ds": ctx.ds or "", "ds_nodash": (ctx.ds or "").replace("-", ""), "run_id": ctx.run_id}
    return [[source.uri, storage.sha256_file(source.local) if source.local is not None else
             _file_digest(source.uri) if storage.is_s3(source.uri) else fingerprint(source.uri)]
            for source in resolve_sources(render_sources(ctx.config.data.source, variables))]


def _extras(ctx: RunContext, step: str) -> dict[str, Any]:
    """What decides a step's result besides its config and its inputs."""
    if step == "ingest_examples":
        return {"sources": _sources_digest(ctx)}
    if step == "validate_examples":
        from tasks.context import curated_schema_path

        root, name = ctx.settings.artifact_root, ctx.config.name
        return {"curated": _file_digest(str(curated_schema_path(ctx))),
                "recorded": _file_digest(artifacts.recorded_schema_uri(root, name)),
                "baseline": _file_digest(artifacts.baseline_statistics_uri(root, name))}
    if step == "evaluate_model":
        from tasks.release.model_store import champion_state

        return {"champion": champion_state(ctx.settings.model_store, ctx.config.model_name)}
    if step in ("train_model", "optimize_model") and ctx.config.train.model_fn:
        module = str(ctx.config.train.model_fn).split(":", 1)[0]
        candidates = sorted(Path(ctx.pipeline).parent.glob(f"{module.replace('.', '/')}.py"))
        return {"model_fn": [_file_digest(str(p)) for p in candidates]}
    return {}


def _identity(source: str, record: Mapping[str, Any] | None) -> Any:
    """What of an input record a step's result depends on: validation's schema and train
    statistics by content (a validation run again on the same data is the same input), only
    whether evaluation blessed the model (optimize reads nothing else of it); other records whole."""
    if record is None:
        return None
    if source == "validate_examples":
        return {"schema": _file_digest(record["schema_uri"]), "anomalies": record.get("anomalies"),
                "statistics": _file_digest(storage.join(record["statistics_uri"], "train", "FeatureStats.pb"))}
    if source == "evaluate_model":
        return {"blessed": record.get("blessed")}
    return dict(record)


def step_key(ctx: RunContext, step: str, sources: tuple[str, ...], inputs: tuple[Mapping[str, Any] | None, ...]) -> str:
    """The key of ``step`` with these input records (of the steps ``sources``) in this run (see the
    module's docstring)."""
    config = ctx.config.model_dump(mode="json")
    material = {"step": step, "code": code_digest(), "config": {k: config.get(k) for k in SECTIONS[step]},
                "inputs": [_identity(source, record) for source, record in zip(sources, inputs)],
                **_extras(ctx, step)}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _entry_uri(ctx: RunContext, step: str, key: str) -> str:
    return storage.join(artifacts.pipeline_root(ctx.settings.artifact_root, ctx.config.name), "cache", step,
                        f"{key}.json")


def _artifact_uris(record: Mapping[str, Any]) -> list[str]:
    return [record[field] for field in ("uri", "statistics_uri", "anomalies_uri") if isinstance(record.get(field), str)]


def lookup(ctx: RunContext, step: str, key: str) -> dict[str, Any] | None:
    """The earlier successful run of ``step`` with this key, if its artifacts are all still there."""
    uri = _entry_uri(ctx, step, key)
    try:
        entry = json.loads(storage.read_bytes(uri))
    except storage.ArtifactNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring the damaged cache entry %s", uri)
        return None
    for artifact in _artifact_uris(entry["record"]):
        try:
            storage.require_complete(artifact)
        except (storage.ArtifactNotFoundError, OSError) as error:
            log.info("%s: not reusing run %s, its artifact %s is gone (%s)", step, entry.get("run_id"), artifact, error)
            return None
    return entry


def store(ctx: RunContext, step: str, key: str, record: Mapping[str, Any], mlflow_run_id: str | None) -> None:
    """Keep a successful step's record under its key (a later run with the same key reuses it)."""
    entry = {"key": key, "step": step, "run_id": ctx.run_id, "dag_id": ctx.dag_id, "record": dict(record),
             "mlflow_run_id": mlflow_run_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    # Not key-sorted: a record's order is part of it (the examples' columns are the model's feature order).
    storage.write_bytes(_entry_uri(ctx, step, key), json.dumps(entry, indent=2).encode())
