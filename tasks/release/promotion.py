"""Promotion, rollback and recovery of a model's champion: plain functions over the model store and
TensorFlow Serving. The registry is passed in (:class:`Registry`); nothing here knows MLflow.

The invariants they keep are in ``docs/release.md``: a push's promotion is pending until it
commits, and a promotion that was never committed is reverted exactly (generation included) by
the push itself, its DAG run's end, or, once its lease is over, the next operation.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tasks.release import audit, model_store, models_config, serving
from tasks.settings import Settings

log = logging.getLogger(__name__)


class Registry(Protocol):
    """The model registry as the release sees it: which registry version holds a store version,
    and the alias ``champion``."""

    def version_for(self, model_name: str, store_version: int) -> str | None: ...

    def move_alias(self, model_name: str, registry_version: str, verb: str) -> str | None: ...

    def remove_alias(self, model_name: str) -> None: ...

    def record_event(self, model_name: str, entry: dict[str, Any]) -> None: ...


def lease_seconds(serving_timeout: float) -> float:
    """How long a push's promotion may stay uncommitted before another operation reverts it: the
    TF Serving check plus ample time for the registry."""
    return serving_timeout + 900.0


def promote(settings: Settings, model_name: str, version: int, owner: str, registry: Registry,
            registry_version: str, evaluated_against, served, warmup: list[bytes], expected,
            serving_timeout: float, reason: str = "push",
            details: dict[str, Any] | None = None) -> tuple[model_store.ChampionChange, dict[str, Any] | None]:
    """Make ``version`` champion by compare-and-swap (pending), then ``models.config``, TF Serving
    and the registry alias follow, then the promotion commits and is recorded in the audit trail
    (``reason``, ``details``). A failure before the commit reverts it before it is raised.

    Returns:
        What the swap did, and TF Serving's check (None without ``TFPIPE_SERVING_URL``).

    Raises:
        StaleBlessingError: The champion is not ``evaluated_against`` (gate the model again).
        ServingCheckError: TF Serving does not serve ``version`` (reverted, the version removed).
    """
    change = model_store.set_champion(settings.model_store, model_name, version, by=owner, reason="push",
                                      expected=evaluated_against, fallback=served,
                                      pending_seconds=lease_seconds(serving_timeout))
    checked = None
    try:
        models_config.write_models_config(settings.model_store, settings.serving_base_path)
        if settings.serving_url:
            checked = check_tf_serving(settings, model_name, version, warmup, expected, owner, registry,
                                       serving_timeout)
        registry.move_alias(model_name, registry_version, "replaced")
        model_store.commit_promotion(settings.model_store, model_name, version, owner)
    except serving.ServingCheckError:
        raise  # check_tf_serving reverted the promotion and removed the version
    except BaseException as error:
        if revert(settings, model_name, owner, f"the push failed before it committed: {type(error).__name__}"):
            log.error("promoting %s v%d failed: %s is champion again", model_name, version,
                      f"v{change.previous}" if change.previous is not None else "no version")
        align(settings, model_name, registry)
        raise
    entry = audit.record(settings.model_store, model_name, "promoted", owner, change.previous, version, reason,
                         operation=owner, details=details)
    _tag_event(registry, model_name, entry)
    return change, checked


def _tag_event(registry: Registry, model_name: str, entry: dict[str, Any]) -> None:
    """The audit event on the registry versions too; the trail in the store is the record, so a
    registry that cannot be reached is only reported."""
    try:
        registry.record_event(model_name, entry)
    except Exception as error:  # noqa: BLE001 - the store's trail holds the event
        log.warning("the audit event %s of %s could not be tagged in the registry: %s", entry["event"], model_name,
                    error)


def revert(settings: Settings, model_name: str, operation: str | None, why: str) -> dict[str, Any] | None:
    """:func:`model_store.revert_pending`, recorded in the audit trail when it reverted something."""
    reverted = model_store.revert_pending(settings.model_store, model_name, operation=operation)
    if reverted is not None:
        state = model_store.champion_state(settings.model_store, model_name)
        audit.record(settings.model_store, model_name, "reverted", operation or "the promotion's lease expiry",
                     int(reverted["version"]), state[0] if state else None, why,
                     details={"pending_by": reverted.get("by")})
    return reverted


def check_tf_serving(settings: Settings, model_name: str, version: int, records: list[bytes], expected,
                     owner: str, registry: Registry, timeout: float) -> dict[str, Any]:
    """TensorFlow Serving must serve the new champion; if not, the promotion is reverted and the
    version removed."""
    try:
        return serving.check_tf_serving(settings.serving_url, model_name, version, records, expected,
                                        timeout=timeout)
    except serving.ServingCheckError as error:
        reverted = revert(settings, model_name, owner, f"TensorFlow Serving did not serve v{version}")
        align(settings, model_name, registry)
        model_store.discard_version(settings.model_store, model_name, version)
        state = model_store.champion_state(settings.model_store, model_name)
        restored = (f"v{state[0]} is champion again" if state else "no version is champion") if reverted else \
            f"the champion is {model_store.describe_state(state)}"
        raise serving.ServingCheckError(f"{error}; {restored}, v{version} was removed from the store") from error


def recover(settings: Settings, model_name: str, registry: Registry,
            operation: str | None = None) -> dict[str, Any] | None:
    """Revert a promotion that was never committed (``operation``'s, else one whose lease expired),
    then make ``models.config`` and the registry alias follow the pointer. Every push, rollback,
    serving check and DAG-run end calls it first. Returns the reverted pointer, or None."""
    why = "its DAG run ended without committing it" if operation else "its lease expired (its process died)"
    reverted = revert(settings, model_name, operation, why)
    if reverted is not None:
        align(settings, model_name, registry)
    return reverted


def align(settings: Settings, model_name: str, registry: Registry) -> None:
    """``models.config`` and the registry alias follow the champion pointer; a registry that cannot
    be reached is reported and left to the next operation (the pointer and TF Serving agree)."""
    models_config.write_models_config(settings.model_store, settings.serving_base_path)
    state = model_store.champion_state(settings.model_store, model_name)
    try:
        registry_version = registry.version_for(model_name, state[0]) if state else None
        if registry_version is not None:
            registry.move_alias(model_name, registry_version, "reverted")
        elif state is None:
            registry.remove_alias(model_name)
    except Exception as error:  # noqa: BLE001 - the next push, rollback or serving check repairs it
        log.warning("the registry alias of %s could not follow the champion (%s): %s; the next push, rollback or "
                    "serving check sets it", model_name, model_store.describe_state(state), error)


def rollback(settings: Settings, model_name: str, registry: Registry, to_version: int | None = None,
             by: str = "cli", serving_timeout: float = 300.0, operation: str | None = None,
             reason: str = "rollback") -> dict[str, Any]:
    """Move the champion back (to ``to_version``, else the previous champion) and update serving;
    the registry alias is left to the caller, who records the rollback.

    Verified like a push: the version's files are checked against its manifest and it answers its
    warm-up requests before it becomes champion; with ``TFPIPE_SERVING_URL`` set, TensorFlow
    Serving must then serve it, or the rollback is undone. A retry of ``operation`` finishes its
    rollback rather than stepping back once more.

    Raises:
        ModelStoreError: No champion, or the version is not in the store.
        ServingCheckError: The version does not serve (the champion is what it was).
    """
    store = settings.model_store
    recover(settings, model_name, registry)
    current = model_store.read_champion(store, model_name)
    if current is None:
        raise model_store.ModelStoreError(f"{model_name} has no champion in {store}: nothing to roll back")
    retry = operation is not None and current.get("operation") == operation and current.get("reason") == "rollback"
    target = int(current["version"]) if retry else (
        to_version if to_version is not None else model_store.rollback_target(store, model_name))
    if target not in model_store.versions(store, model_name):
        raise model_store.ModelStoreError(f"{model_name} has no complete version {target} in {store} "
                                          f"(versions: {model_store.versions(store, model_name) or 'none'})")
    records, expected = verified_version(settings, model_name, target)
    change = model_store.set_champion(store, model_name, target, by=by, reason="rollback", operation=operation)
    previous = int(current["history"][-1]["version"]) if retry and current.get("history") else change.previous
    details: dict[str, Any] = {"model_name": model_name, "from_version": previous, "to_version": target, "by": by,
                               "store": store, "finished_a_retried_rollback": retry}
    details["models_config"] = models_config.write_models_config(store, settings.serving_base_path)
    if settings.serving_url:
        details["tf_serving"] = _serve_or_undo(settings, model_name, target, records, expected, change,
                                               serving_timeout)
    details["audit"] = audit.record(store, model_name, "rolled_back", by, previous, target, reason,
                                    operation=operation)
    _tag_event(registry, model_name, details["audit"])
    return details


def verified_version(settings: Settings, model_name: str, version: int):
    """A stored version's warm-up requests and answers, once every file matched its manifest and
    the SavedModel answered them (finite scores) from the store."""
    from tasks.evaluate import predict

    local, _ = serving.verify_version(settings.model_store, model_name, version, settings.cache_dir)
    records = serving.read_warmup_requests(local / serving.WARMUP_FILE)
    return records, predict(local, records)


def _serve_or_undo(settings: Settings, model_name: str, version: int, records, expected, change,
                   timeout: float) -> dict[str, Any]:
    """TensorFlow Serving must serve ``version`` as the store does; if not, the change is undone."""
    try:
        return serving.check_tf_serving(settings.serving_url, model_name, version, records, expected, timeout=timeout)
    except serving.ServingCheckError as error:
        if change.changed:
            model_store.undo_promotion(settings.model_store, model_name, change)
            models_config.write_models_config(settings.model_store, settings.serving_base_path)
        raise serving.ServingCheckError(f"{error}; the rollback to v{version} was undone") from error
