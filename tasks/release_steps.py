"""The release as steps and operations of a run: ``push_model`` (a pipeline step), and
``rollback_model``, ``check_serving`` and ``end_dag_run`` (operations the DAGs, the CLI and the
listener call). Each records what it did in MLflow and calls the plain functions of
:mod:`tasks.release` (promotion, the model store, serving), which know nothing of MLflow."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.artifacts import Blessing, ExamplesArtifact, ModelArtifact, OptimizedArtifact
from tasks.context import RunContext, code_version, data_version, end_pipeline, step_run, tracking_for
from tasks.settings import Settings, redact
from tasks.tracking import MlflowTracker

log = logging.getLogger(__name__)


def push_model(ctx: RunContext, examples: ExamplesArtifact, model: ModelArtifact, blessing: Blessing,
               optimized: OptimizedArtifact | None = None) -> dict[str, Any]:
    """Push, check that the pushed version serves, register it, make it champion, prune old versions.

    A transaction (docs/release.md): the version is claimed by this DAG run, so a retry finishes
    the same version; it is promoted only if the champion is still the one its blessing was
    evaluated against (compare-and-swap), after it was loaded back from the store and answered
    its warm-up requests as the model did before the push, and after its registry version
    exists. If another push promoted a version meanwhile (concurrent runs, a backfill), the model
    is gated again against that champion; after a rollback it is refused. If anything fails once
    it is champion (``models.config``, TF Serving, the registry alias), the previous champion is
    restored before the error is raised.
    """
    from tasks.release import model_store, promotion

    examples, model, blessing = ExamplesArtifact.of(examples), ModelArtifact.of(model), Blessing.of(blessing)
    optimized = OptimizedArtifact.of(optimized) if optimized else None
    with step_run(ctx, "push_model") as tracker:
        recover_store(ctx.settings, ctx.config.model_name)  # a promotion whose process died
        # Re-read the published blessing rather than trusting what came through XCom.
        verdict = Blessing.read(blessing.uri)
        if verdict.model_uri != model.uri:
            raise ValueError(f"blessing {blessing.uri} is for {verdict.model_uri}, not {model.uri}")
        owner = f"{ctx.dag_id}/{ctx.run_id}"
        refused = _approval_missing(ctx, owner)
        if refused is not None:
            return _not_approved(ctx, tracker, refused)
        digest = _weights_digest(ctx, model)
        same = _identical_champion(ctx, digest, owner) if ctx.config.push.skip_identical else None
        if same is not None:
            return _identical(ctx, tracker, same, digest)
        pushed = change = None
        for _attempt in range(5):  # each lost compare-and-swap gates the model again
            verdict = _current_blessing(ctx, tracker, examples, model, verdict, owner)
            if not verdict.blessed:
                return _not_promoted(ctx, tracker, verdict, pushed)
            if pushed is None:
                pushed, warmup, expected = _push_files(ctx, examples, model, verdict, optimized, owner, digest)
                checks = {"store": _check_store(ctx, pushed, expected)}
                registry_version = _register(ctx, tracker, examples, model, pushed)
            try:
                change, served = promotion.promote(
                    ctx.settings, ctx.config.model_name, pushed.version, owner, registry_for(ctx.settings),
                    registry_version, verdict.evaluated_state, _served_before(ctx.settings.model_store,
                                                                      ctx.config.model_name, pushed.version),
                    warmup, expected, ctx.config.push.serving_timeout_seconds, _why(verdict),
                    {"registry_version": registry_version, "mlflow_run_id": tracker.run_id, "blessing": verdict.uri,
                     "metrics": verdict.metrics, "weights_sha256": digest})
                if served is not None:
                    checks["tf_serving"] = served
                break
            except model_store.StaleBlessingError:
                continue  # the champion changed between the check and the swap: gate again
        if change is None:
            raise RuntimeError(f"{ctx.config.model_name}: the champion kept changing while v{pushed.version} was "
                               "promoted; try again")
        record = _pushed(ctx, tracker, pushed, change, checks, registry_version, verdict)
        record["model_card"] = _model_card(ctx, tracker, examples, model, verdict, optimized, record)
        end_pipeline(ctx, tracker, "pushed")
        return record


def _approval_missing(ctx: RunContext, owner: str) -> str | None:
    """Why the model may not be pushed for want of a reviewer's approval (``push.approval:
    required``), or None. The decision is read from the audit trail, not from the task that asked."""
    from tasks.release.approval import approval_of

    if ctx.config.push.approval != "required":
        return None
    decision = approval_of(ctx.settings.model_store, ctx.config.model_name, owner)
    if decision is None:
        return ("push.approval is required and no reviewer approved this run's model (approve it in the Airflow UI, "
                "task approve_release)")
    if decision["event"] != "approved":
        return f"the reviewer {decision['by']} rejected this run's model: {decision.get('reason')}"
    return None


def _not_approved(ctx: RunContext, tracker: MlflowTracker, why: str) -> dict[str, Any]:
    tracker.set_tags({"tfpipe.pushed": "false", "tfpipe.approval": why[:5000]})
    log.warning("%s is not pushed: %s", ctx.config.model_name, why)
    end_pipeline(ctx, tracker, "not_approved")
    return {"pushed": False, "model_name": ctx.config.model_name, "reasons": [why], "approval": "missing"}


def _weights_digest(ctx: RunContext, model: ModelArtifact) -> str:
    from tasks.release.push import weights_digest

    return weights_digest(model.saved_model(ctx.settings.cache_dir))


def _identical_champion(ctx: RunContext, digest: str, owner: str) -> int | None:
    """The champion's version when its weights are ``digest`` (and it is not this run's own push,
    retried), else None."""
    from tasks.release import model_store

    store, name = ctx.settings.model_store, ctx.config.model_name
    served = model_store.champion(store, name)
    if served is None or model_store.claimed_by(store, name, owner) == served[0]:
        return None
    try:
        recorded = model_store.read_manifest(served[1]).get("weights_sha256")
    except (storage.ArtifactNotFoundError, ValueError):
        return None
    return served[0] if recorded == digest else None


def _identical(ctx: RunContext, tracker: MlflowTracker, version: int, digest: str) -> dict[str, Any]:
    """The model's weights are the champion's: no new version (``push.skip_identical``)."""
    name = ctx.config.model_name
    tracker.set_tags({"tfpipe.pushed": "false", "tfpipe.identical_to_version": str(version)})
    tracker.log_params({"weights_sha256": digest})
    log.info("%s is not pushed: its weights are those of the champion v%d (SHA-256 %s...), which keeps serving; "
             "push.skip_identical: false pushes it anyway", name, version, digest[:12])
    end_pipeline(ctx, tracker, "identical_to_champion")
    return {"pushed": False, "model_name": name, "identical_to": version, "weights_sha256": digest,
            "reasons": [f"its weights equal those of the champion v{version}"]}


def _why(verdict: Blessing) -> str:
    """The audit trail's reason for a push's promotion."""
    against = verdict.evaluated_against
    passed = sum(1 for c in verdict.checks if c.passed)
    return (f"blessed against v{against['version']}" if against else "blessed (no champion before)") + \
        f": {passed} check(s) passed"


def _current_blessing(ctx: RunContext, tracker: MlflowTracker, examples: ExamplesArtifact, model: ModelArtifact,
                      verdict: Blessing, owner: str) -> Blessing:
    """The blessing, valid against what serves now: as published when the champion is still the one
    it measured (or this run's own version, a retry); gated again against a champion another push
    promoted meanwhile. After a rollback the push is refused: the gate cannot know why it was rolled
    back, and must not undo it."""
    from tasks.release import model_store
    from tasks.evaluate import evaluate_model, format_checks

    store, name = ctx.settings.model_store, ctx.config.model_name
    mine = model_store.claimed_by(store, name, owner)
    served, evaluated = _served_before(store, name, mine), verdict.evaluated_state
    if served == evaluated or (served is not None and served[0] == mine):
        return verdict
    if model_store.rolled_back_since(store, name, evaluated[1] if evaluated else None):
        raise model_store.StaleBlessingError(
            f"refusing to push {name}: the champion was rolled back to {model_store.describe_state(served)} after "
            f"this run's blessing was evaluated against {model_store.describe_state(evaluated)}; trigger a new run to "
            "evaluate against what serves now")
    log.warning("the champion of %s is %s, not %s as when this run evaluated: gating the model again", name,
                model_store.describe_state(served), model_store.describe_state(evaluated))
    state = model_store.champion_state(store, name)
    blessing = evaluate_model(model.uri, examples.uri, ctx.config.gate, model_store.champion(store, name),
                              storage.join(ctx.output("evaluation"), f"regated-{state[0] if state else 0}"),
                              ctx.settings.cache_dir, ctx.work_dir("push_model"),
                              champion_generation=state[1] if state else None)
    tracker.log_text(format_checks(blessing), f"push/regated-v{state[0] if state else 0}.txt")
    log.info("gated again:\n%s", format_checks(blessing))
    return blessing


def _not_promoted(ctx: RunContext, tracker: MlflowTracker, verdict: Blessing, pushed) -> dict[str, Any]:
    """Gated again against a newer champion, the model is not blessed: nothing of it stays served."""
    from tasks.release import model_store

    if pushed is not None:
        model_store.discard_version(ctx.settings.model_store, ctx.config.model_name, pushed.version)
    tracker.set_tags({"tfpipe.pushed": "false"})
    log.warning("%s is not pushed: gated again against the champion another run promoted meanwhile, it is not "
                "blessed (%s)", ctx.config.model_name,
                "; ".join(verdict.failed_reasons))
    end_pipeline(ctx, tracker, "not_blessed_against_the_new_champion")
    return {"pushed": False, "model_name": ctx.config.model_name, "reasons": verdict.reasons}


def _pushed(ctx: RunContext, tracker: MlflowTracker, pushed, change, checks, registry_version: str,
            verdict: Blessing) -> dict[str, Any]:
    """Record and log what was pushed (retention included)."""
    settings, name = ctx.settings, ctx.config.model_name
    removed = _retention(ctx)
    record = {**pushed.to_dict(), "pushed": True, "registry_version": registry_version, "champion": change.version,
              "previous_champion": change.previous, "checks": checks, "removed_versions": removed,
              "evaluated_against": verdict.evaluated_against}
    tracker.log_params({"pushed_uri": pushed.uri, "pushed_version": pushed.version})
    tracker.log_metrics({"pushed_bytes": pushed.bytes, "pushed_files": pushed.files,
                         "store_check_max_abs_diff": checks["store"]["max_abs_diff"]})
    tracker.log_dict(record, "push/pushed_model.json")
    tracker.set_tags({"tfpipe.pushed_uri": pushed.uri, "tfpipe.registry_version": registry_version,
                      "tfpipe.champion": str(change.version)})
    tracker.log_headline(pushed=record, mlflow_ui_url=settings.mlflow_ui_url)
    log.info("pushed %s v%d (%d files, %d bytes, %d warm-up requests); champion: v%d%s", name, pushed.version,
             pushed.files, pushed.bytes, pushed.warmup_requests, change.version,
             f"; removed old versions {removed}" if removed else "")
    return record


def _model_card(ctx: RunContext, tracker: MlflowTracker, examples: ExamplesArtifact, model: ModelArtifact,
                verdict: Blessing, optimized: OptimizedArtifact | None, record: dict[str, Any]) -> dict[str, Any] | None:
    """The version's model card (:mod:`tasks.release_card`); the version serves already, so a card
    that cannot be written is reported, not raised."""
    from tasks.release_card import card_facts, write_model_card

    try:
        return write_model_card(ctx, tracker, card_facts(ctx, tracker, examples, model, verdict, optimized, record))
    except Exception as error:  # noqa: BLE001 - the push is committed; the card can be written again
        log.warning("the model card of %s v%s could not be written: %s: %s", ctx.config.model_name,
                    record.get("version"), type(error).__name__, error)
        return None


def _served_before(store: str, name: str, mine: int | None) -> tuple[int, int | None] | None:
    """The champion state as a blessing sees it: the pointer's, else (a store without one yet) the
    newest complete version other than this run's own."""
    from tasks.release import model_store

    if model_store.read_champion(store, name) is not None:
        return model_store.champion_state(store, name)
    others = [v for v in model_store.versions(store, name) if v != mine]
    return (others[-1], None) if others else None


def _push_files(ctx: RunContext, examples: ExamplesArtifact, model: ModelArtifact, verdict: Blessing,
                optimized: OptimizedArtifact | None, owner: str, digest: str):
    """Copy the model into its claimed version (a retry finishes the same one); returns it with the
    warm-up records and what the model answers them before the push."""
    from tasks.coders import first_records
    from tasks.evaluate import predict
    from tasks.release.push import push_model as push
    settings, options = ctx.settings, ctx.config.push
    saved_model = model.saved_model(settings.cache_dir)
    # The first eval examples only: the split may be large.
    eval_files = artifacts.Examples.open(examples.uri).files("eval", settings.cache_dir)
    warmup = first_records(eval_files, options.warmup_requests)
    expected = predict(saved_model, warmup)
    pushed = push(saved_model, verdict, settings.model_store, ctx.config.model_name, owner=owner,
                  warmup_records=warmup, variant_files=_kept_variants(ctx, optimized) if options.publish_variants
                  else [], work_dir=ctx.work_dir("push_model"), weights_sha256=digest)
    return pushed, warmup, expected


def _check_store(ctx: RunContext, pushed, expected) -> dict[str, Any]:
    """Load the version back from the store: it must answer as the model did. A version that
    does not is removed."""
    from tasks.release import model_store, serving

    try:
        check = serving.check_pushed_model(pushed.uri, expected, ctx.settings.cache_dir)
    except serving.ServingCheckError:
        model_store.discard_version(ctx.settings.model_store, ctx.config.model_name, pushed.version)
        raise
    log.info("v%d loaded back from %s and answered %d warm-up requests as before the push",
             pushed.version, pushed.uri, check["requests"])
    return check


def _register(ctx: RunContext, tracker: MlflowTracker, examples: ExamplesArtifact, model: ModelArtifact,
              pushed) -> str:
    """The version in the MLflow registry (the alias moves only once it is champion); a retry
    finds the registry version it created before."""
    from tasks.tracking import registry_version_for

    name = ctx.config.model_name
    found = registry_version_for(tracker.client, name, pushed.version)
    if found is not None:
        return found
    # The registry version is the MLflow logged model of train_model (pyfunc, signature, input
    # example); an MLflow server refuses a local path as a source. The store URI is a tag.
    source = (f"models:/{model.mlflow_model_id}" if model.mlflow_model_id
              else f"runs:/{model.mlflow_run_id}/model" if model.mlflow_run_id else pushed.uri)
    tags = {"store_uri": pushed.uri, "store_version": str(pushed.version), "pipeline": ctx.config.name,
            "dag_id": ctx.dag_id, "run_id": ctx.run_id, "push_mlflow_run_id": tracker.run_id,
            "model_uri": model.uri, "code_version": code_version(), "data_version": data_version(examples.uri)}
    tracker.log_model_input(model.mlflow_model_id)
    return tracker.register_model(name, source, tags, champion=False, source_run_id=model.mlflow_run_id,
                                  model_id=model.mlflow_model_id)


def registry_for(settings: Settings):
    """The MLflow Model Registry of ``settings``, as the release uses it."""
    from tasks.tracking import MlflowRegistry

    return MlflowRegistry(lambda: tracking_for(settings).client)


def recover_store(settings: Settings, model_name: str, operation: str | None = None) -> dict[str, Any] | None:
    """See :func:`tasks.release.promotion.recover`, with this settings' registry."""
    from tasks.release import promotion

    return promotion.recover(settings, model_name, registry_for(settings), operation)


def _retention(ctx: RunContext) -> list[int]:
    """Remove old versions; housekeeping that never fails a push that already serves (the next push
    retries it)."""
    from tasks.release import model_store

    try:
        return model_store.apply_retention(ctx.settings.model_store, ctx.config.model_name,
                                           ctx.config.push.keep_versions)
    except Exception as error:  # noqa: BLE001 - the version is champion; old versions can wait
        log.warning("retention of %s failed and is left to the next push: %s", ctx.config.model_name, error)
        return []


def _kept_variants(ctx: RunContext, optimized: OptimizedArtifact | None) -> list[Path]:
    """The optimized variants that were kept, and their report, as local files."""
    if not optimized:
        return []
    local = storage.materialize(optimized.uri, ctx.settings.cache_dir)
    rows = optimized.report["variants"]
    paths = [local / rows[name]["file"] for name in optimized.kept if rows[name].get("file")]
    extras = [local / name for name in (artifacts.REPORT_FILE, artifacts.CHART_FILE)]
    return [p for p in paths if p.exists()] + [p for p in extras if p.is_file()]


def experiment_for_model(settings: Settings, model_name: str) -> str:
    """The MLflow experiment of the pipeline that pushes ``model_name`` (else the model's name)."""
    from tasks.config import pipelines_by_model

    return pipelines_by_model(settings.pipelines_dir).get(model_name, model_name)


def rollback_model(settings: Settings, model_name: str, to_version: int | None = None, by: str = "cli",
                   serving_timeout: float = 300.0, operation: str | None = None,
                   reason: str = "rollback") -> dict[str, Any]:
    """Move the champion back (see :func:`tasks.release.promotion.rollback`), then the registry
    alias follows and the rollback is logged as an MLflow run.

    Args:
        operation: What asks for the rollback (a DAG run): its retry finishes this rollback
            rather than stepping back once more.
        reason: Why, for the audit trail.

    Raises:
        ModelStoreError: No champion, or the version is not in the store.
        ServingCheckError: The version does not serve (the champion is what it was).
    """
    from tasks.release import promotion

    details = promotion.rollback(settings, model_name, registry_for(settings), to_version, by, serving_timeout,
                                 operation, reason)
    details["mlflow"] = tracking_for(settings).record_rollback(
        experiment_for_model(settings, model_name), model_name, details["from_version"], details["to_version"], by, details)
    log.info("rolled %s back from v%s to v%d", model_name, details["from_version"], details["to_version"])
    return details


def end_dag_run(settings: Settings, dag_id: str, run_id: str, state: str) -> str | None:
    """A DAG run ended (the listener in ``plugins/`` calls this). When it did not succeed, a promotion
    its push left uncommitted (a killed worker) is reverted first. Then see
    :meth:`MlflowTracking.end_pipeline_run`. A DAG that is no pipeline has no MLflow run: None."""
    if state != "success":
        from tasks.release import model_store

        try:
            for model_name in model_store.models(settings.model_store):
                recover_store(settings, model_name, operation=f"{dag_id}/{run_id}")
        except Exception as error:  # noqa: BLE001 - the lease reverts it later; the MLflow run still ends
            log.warning("could not check %s for a promotion %s/%s left pending: %s", settings.model_store, dag_id,
                        run_id, error)
    tracking = tracking_for(settings)
    return tracking.end_pipeline_run(dag_id, run_id, state)


def check_serving(settings: Settings, model_name: str, pushed: Mapping[str, Any] | None = None,
                  by: str = "cli", timeout: float = 300.0) -> dict[str, Any]:
    """Check what serves ``model_name`` (see :func:`tasks.release.serving.check_serving`) and log the
    check as an MLflow run (tag ``tfpipe.role=serving_check``), FAILED with the reason when it fails.

    Args:
        pushed: The push that triggered the check (the asset event's extra), recorded with it.

    Raises:
        ServingCheckError: What serves is not what it should be.
    """
    from tasks.release import serving

    recover_store(settings, model_name)
    tracking = tracking_for(settings)
    params = {"model_name": model_name, "store": settings.model_store, "serving_url": redact(settings.serving_url) or "",
              "triggered_by_version": (pushed or {}).get("version", "")}
    tags = {"tfpipe.model_name": model_name, "tfpipe.checked_by": by}
    try:
        report = serving.check_serving(settings.model_store, model_name, settings.cache_dir, settings.serving_url,
                                       timeout)
    except (serving.ServingCheckError, storage.ArtifactNotFoundError) as error:
        tracking.record_operation(experiment_for_model(settings, model_name), f"serving check {model_name}", "serving_check",
                                  params, {"error": str(error), "pushed": dict(pushed or {})},
                                  {**tags, "tfpipe.serving_check": "failed"}, status="FAILED")
        raise
    report["mlflow_run_id"] = tracking.record_operation(
        experiment_for_model(settings, model_name), f"serving check {model_name} v{report['version']}", "serving_check",
        params, {**report, "pushed": dict(pushed or {})},
        {**tags, "tfpipe.serving_check": "passed", "tfpipe.checked_version": str(report["version"])})
    log.info("serving check of %s: v%d intact (%d files), answers its %d warm-up requests%s", model_name,
             report["version"], report["files"], report["requests"],
             ", served by TensorFlow Serving" if "tf_serving" in report else "")
    return report
