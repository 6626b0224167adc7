"""Exact re-runs: every run records what running it again needs, and ``tfpipe rerun`` runs it
again and says what is still the same.

``<artifact_root>/<pipeline>/runs/<run_id>/rerun.json`` (also the pipeline run's MLflow artifact
``rerun.json``), written once ingest has read the data:

* the pipeline file, and the config as the run resolved it (YAML, trigger params, ``--set``),
  with the overrides that made it and a DAG run's trigger conf (triggering the DAG with it again
  resolves the same config, as long as the pipeline file is unchanged);
* the code: tfpipe's version (and git commit), a digest of its source files and the installed
  TensorFlow, TFDV and MLflow versions (:func:`tasks.cache.code_digest`), the lock file's SHA-256,
  and the image the run ran in when the deployment says (``TFPIPE_IMAGE``);
* the data: every source file with its SHA-256 and row count, and the run's date (``ds``).

:func:`rerun` loads the same pipeline file with the same overrides, refuses when the config it
resolves to is not the recorded one (unless told to go on), runs the steps under a new run id, and
reports whether the data, the code and the lock file are what they were and whether the model has
the same weights (with ``train.deterministic: true`` and unchanged inputs it has).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.context import RunContext, code_version, make_context
from tasks.errors import UserError
from tasks.settings import Settings

RERUN_FILE = "rerun.json"
LOCK_FILE = Path(__file__).resolve().parents[1] / "uv.lock"


def lock_digest() -> str | None:
    """SHA-256 of the lock file the environment was built from (None where there is none)."""
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest() if LOCK_FILE.is_file() else None


def _uri(settings: Settings, pipeline: str, run_id: str) -> str:
    return storage.join(artifacts.run_root(settings.artifact_root, pipeline, run_id), RERUN_FILE)


def record(ctx: RunContext, examples: dict[str, Any]) -> dict[str, Any]:
    """Write the run's re-run record (see the module's docstring) and return it."""
    from tasks.cache import code_digest

    manifest = artifacts.Examples.open(examples["uri"]).manifest
    entry = {
        "pipeline": ctx.config.name, "pipeline_file": ctx.pipeline, "run_id": ctx.run_id, "dag_id": ctx.dag_id,
        "ds": ctx.ds, "orchestrator": ctx.orchestrator, "overrides": dict(ctx.overrides),
        "conf": json.loads(json.dumps(ctx.params, default=str)),
        "config": ctx.config.model_dump(mode="json"),
        "code": {"version": code_version(), "digest": code_digest(), "lock_sha256": lock_digest(),
                 "image": os.environ.get("TFPIPE_IMAGE") or None},
        "data": [{"uri": s["uri"], "sha256": s["sha256"], "rows": s.get("rows")} for s in manifest["sources"]],
        "examples_uri": examples["uri"],
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_bytes(_uri(ctx.settings, ctx.config.name, ctx.run_id), json.dumps(entry, indent=2).encode())
    return entry


def read(settings: Settings, pipeline: str, run_id: str) -> dict[str, Any]:
    """A run's re-run record; a clear error when the run did not record one."""
    uri = _uri(settings, artifacts.checked_name(pipeline, "pipeline name"), run_id)
    try:
        return json.loads(storage.read_bytes(uri))
    except storage.ArtifactNotFoundError:
        raise UserError(f"run {run_id!r} of {pipeline} recorded nothing to re-run it from ({uri} does not exist: "
                        "the run never ingested, or ran before runs recorded it)") from None


def _differences(before: Any, after: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two resolved configs differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(set(before) | set(after))
                for d in _differences(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def prepare(settings: Settings, pipeline: str, run_id: str, new_run_id: str,
            anyway: bool = False) -> tuple[RunContext, dict[str, Any], list[str]]:
    """The context of the re-run (same pipeline file, same overrides, same date), the record, and
    the config keys that resolve differently now.

    Raises:
        UserError: The config differs and ``anyway`` is not set.
    """
    entry = read(settings, pipeline, run_id)
    ctx = make_context(entry["pipeline_file"], run_id=new_run_id, settings=settings, overrides=entry["overrides"],
                       ds=entry.get("ds"))
    changed = _differences(entry["config"], ctx.config.model_dump(mode="json"))
    if changed and not anyway:
        raise UserError(f"the pipeline file {entry['pipeline_file']} no longer resolves to the config run {run_id} "
                        f"used (different: {', '.join(changed)}); re-run with --anyway to run it as it is now")
    return ctx, entry, changed


def compare(settings: Settings, entry: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """What is still as it was: data (per source), code, lock file, and the model's weights."""
    from tasks.cache import code_digest

    report: dict[str, Any] = {"code_same": entry["code"]["digest"] == code_digest(),
                              "lock_same": entry["code"]["lock_sha256"] == lock_digest(),
                              "code_then": entry["code"]["version"], "code_now": code_version()}
    examples = results.get("ingest_examples")
    if examples:
        now = {s["uri"]: s["sha256"] for s in artifacts.Examples.open(examples["uri"]).manifest["sources"]}
        then = {s["uri"]: s["sha256"] for s in entry["data"]}
        report["data_same"] = now == then
        report["data_changed"] = sorted(u for u in set(now) | set(then) if now.get(u) != then.get(u))
    model = results.get("train_model")
    if model:
        report["weights_same"], report["weights_then"], report["weights_now"] = _same_weights(settings, entry, model)
    return report


def _same_weights(settings: Settings, entry: dict[str, Any], model: dict[str, Any]):
    from tasks.release.push import weights_digest

    before_uri = storage.join(artifacts.run_root(settings.artifact_root, entry["pipeline"], entry["run_id"]), "model")
    try:
        before = weights_digest(artifacts.ModelArtifact.of({**model, "uri": before_uri}).saved_model(settings.cache_dir))
    except (storage.ArtifactNotFoundError, OSError, ValueError):
        before = None  # the first run's model is gone (or never trained)
    after = weights_digest(artifacts.ModelArtifact.of(model).saved_model(settings.cache_dir))
    return before == after if before else None, before, after


def trigger_hint(entry: dict[str, Any]) -> str | None:
    """How to run a DAG run again through Airflow: its DAG with the same conf."""
    if entry.get("orchestrator") != "airflow":
        return None
    return f"through Airflow: airflow dags trigger {shlex.quote(entry['dag_id'])} --conf {shlex.quote(json.dumps(entry.get('conf') or {}))}"


def format_report(run_id: str, new_run_id: str, report: dict[str, Any], changed: list[str]) -> str:
    def same(flag) -> str:
        return {True: "the same", False: "CHANGED", None: "unknown"}[flag]

    lines = [f"re-run of {run_id} as {new_run_id}:",
             f"  config: {'the same' if not changed else 'CHANGED: ' + ', '.join(changed)}",
             f"  code:   {same(report['code_same'])} ({report['code_then']} then, {report['code_now']} now)",
             f"  lock:   {same(report['lock_same'])}"]
    if "data_same" in report:
        lines.append(f"  data:   {same(report['data_same'])}" +
                     (f" ({', '.join(report['data_changed'])})" if report["data_changed"] else ""))
    if "weights_same" in report:
        lines.append(f"  model:  weights {same(report['weights_same'])} "
                     f"({(report['weights_then'] or '-')[:12]} then, {report['weights_now'][:12]} now)")
    return "\n".join(lines)
