"""Running a step with the cache (:mod:`tasks.cache`): a step whose key an earlier successful run
already has is not computed again. Its MLflow child run is still opened, and says it was reused
(tags ``tfpipe.reused_from_run``, ``tfpipe.reused_from_mlflow_run``, ``tfpipe.cache_key``) with the
lineage the step would have logged (its dataset input, the logged model it reads or made); the
task's log says so too. The earlier record goes on to the next steps unchanged."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tasks import artifacts, cache
from tasks.context import RunContext, end_pipeline, step_run
from tasks.tracking import MlflowTracker

log = logging.getLogger(__name__)

# (run id, step) -> the run whose record a step of this process reused, for what the CLI prints.
_REUSED: dict[tuple[str, str], str] = {}


def reused_from(run_id: str, step: str) -> str | None:
    """The run whose record step ``step`` of run ``run_id`` reused in this process, or None."""
    return _REUSED.get((run_id, step))


def run_cached(name: str, ctx: RunContext, inputs: tuple[Mapping[str, Any] | None, ...],
               compute: Callable[[RunContext], dict[str, Any]]) -> dict[str, Any]:
    """``compute(ctx)``'s record, or an earlier run's for the same key (``cache: true``)."""
    if not getattr(ctx.config, "cache", False) or name not in cache.CACHEABLE:
        return compute(ctx)
    from tasks.steps import step_named

    sources = step_named(name).inputs
    key = cache.step_key(ctx, name, sources, inputs)
    entry = cache.lookup(ctx, name, key)
    if entry is not None:
        return _reused(ctx, name, key, entry, inputs)
    seen: dict[str, str] = {}
    original = ctx.on_run

    def remember(run: dict[str, str]) -> None:
        seen["run_id"] = run["run_id"]
        if original is not None:
            original(run)

    record = compute(dataclasses.replace(ctx, on_run=remember))
    if record is not None:
        cache.store(ctx, name, key, record, seen.get("run_id"))
    return record


def _reused(ctx: RunContext, name: str, key: str, entry: dict[str, Any],
            inputs: tuple[Mapping[str, Any] | None, ...]) -> dict[str, Any]:
    record = entry["record"]
    _REUSED[(ctx.run_id, name)] = str(entry.get("run_id"))
    with step_run(ctx, name) as tracker:
        tracker.set_tags({"tfpipe.reused_from_run": str(entry.get("run_id")), "tfpipe.cache_key": key,
                          "tfpipe.reused_from_mlflow_run": str(entry.get("mlflow_run_id") or "")})
        _lineage(ctx, tracker, name, record, inputs)
        log.info("%s: reused from run %s (MLflow run %s): its inputs, config and code are unchanged (cache key %s)",
                 name, entry.get("run_id"), entry.get("mlflow_run_id") or "-", key[:16])
    return record


CONTEXTS = {"ingest_examples": "source", "validate_examples": "validation", "train_model": "training",
            "evaluate_model": "evaluation"}


def _lineage(ctx: RunContext, tracker: MlflowTracker, name: str, record: dict[str, Any],
             inputs: tuple[Mapping[str, Any] | None, ...]) -> None:
    """What the step logs of its inputs and outputs (its dataset, the logged model it reads or
    made, evaluate's headline), for the reused run too."""
    examples = record["uri"] if name == "ingest_examples" else (inputs[0] or {}).get("uri")
    if name in CONTEXTS and examples:
        tracker.log_dataset(artifacts.Examples.open(examples).manifest, ctx.config.name, CONTEXTS[name],
                            on_parent=name == "ingest_examples")
    if name in ("evaluate_model", "optimize_model") and len(inputs) > 1:
        tracker.log_model_input((inputs[1] or {}).get("mlflow_model_id"))
    if name == "train_model" and record.get("mlflow_model_id"):
        tracker.log_model_output(record["mlflow_model_id"])
    tracker.log_dict(record, "reused/record.json")
    if name == "optimize_model":
        tracker.log_dict(record["report"], f"optimization/{artifacts.REPORT_FILE}")
    if name == "evaluate_model":
        tracker.log_dict(record, f"evaluation/{artifacts.BLESSING_FILE}")
        blessing = artifacts.Blessing.of(record)
        tracker.log_metrics(blessing.metrics)
        tracker.set_tags({"tfpipe.blessed": str(blessing.blessed).lower()})
        tracker.log_headline(blessing=record)
        if not blessing.blessed:
            end_pipeline(ctx, tracker, "not_blessed")
