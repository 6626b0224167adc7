"""The serving model store: TensorFlow Serving's ``<model>/<version>/`` layout, and what tells
TensorFlow Serving which version to serve.

::

    <store>/models.config                 TF Serving's model config: the champion of every model
    <store>/<model>/champion.json         the version served, since when, and the history
    <store>/<model>/<version>/            one pushed SavedModel, complete once saved_model.pb exists:
        saved_model.pb, variables/, assets.extra/tf_serving_warmup_requests,
        variants/ (the optimized variants kept), tfpipe_manifest.json (size, SHA-256 of each file)
    <store>/<model>/.claims/<version>     who claimed each version number (a DAG run)

* **Versions** are increasing integers claimed before any file is written, by creating
  ``.claims/<version>`` exclusively (locally ``O_EXCL``, on S3 a conditional ``PutObject``
  with ``If-None-Match: *``); the claim holds its owner, a DAG run. A claimed number is never
  reused, and an owner's retry finds its own claim and finishes that version instead of
  claiming another: one DAG run pushes at most one version.
* **The champion** is the version served. It is a pointer (``champion.json``), not "the
  latest version", so a rollback can move it back. A push promotes its version only if the
  champion is still the one its blessing was evaluated against (a compare-and-swap, see
  :func:`set_champion`); otherwise the blessing is stale and the push is refused.
  ``models.config`` serves exactly the champion
  (``model_version_policy { specific { versions: N } }``), and TensorFlow Serving, polling
  that file (``--model_config_file_poll_wait_seconds``), loads the new version before it
  unloads the old one.
* **Retention** keeps the newest ``keep`` versions and the champion; an older version is
  removed only once a newer one is champion. A version that was never champion is kept for
  :data:`UNPROMOTED_GRACE_SECONDS` after it was pushed: a concurrent push that lost the
  compare-and-swap may still promote it once gated again.
* ``models.config`` is written from the pointers by :mod:`tasks.release.models_config`;
  :mod:`tasks.release.sync` mirrors a store on S3 into a local folder for TensorFlow Serving.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.artifacts import CHAMPION_FILE, MANIFEST_FILE, MODELS_CONFIG, SAVED_MODEL_PB
from tasks.errors import UserError

log = logging.getLogger(__name__)

CLAIMS = ".claims"
HISTORY_LIMIT = 200
HISTORY_KEYS = ("version", "since", "by", "reason", "generation", "operation")
# How long retention keeps a version that was never champion (a push may still promote it).
UNPROMOTED_GRACE_SECONDS = 24 * 3600


class ModelStoreError(RuntimeError):
    """A model store operation could not be done; the message says why."""


class StaleBlessingError(UserError):
    """The champion changed since the blessing was evaluated against it: promoting would replace a
    version the gate never compared with. Evaluate again (a new DAG run) to push."""


# ``expected`` of :func:`set_champion` when any champion may be replaced (a rollback).
ANY = object()


STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    """The time now, as the store records it (UTC, ISO 8601)."""
    return time.strftime(STAMP_FORMAT, time.gmtime())


def _in(seconds: float) -> str:
    return time.strftime(STAMP_FORMAT, time.gmtime(time.time() + seconds))


def _expired(stamp: str) -> bool:
    return now() > stamp


def versions(model_store: str, model_name: str) -> list[int]:
    """Complete versions (those with ``saved_model.pb``), ascending."""
    root = artifacts.model_dir_uri(model_store, model_name)
    found = []
    for name in storage.list_dir(root):
        if name.isdigit() and storage.exists(storage.join(root, name, SAVED_MODEL_PB)):
            found.append(int(name))
    return sorted(found)


def models(model_store: str) -> list[str]:
    """Names of the models in a store (folders holding a champion pointer or a version)."""
    found = []
    for name in storage.list_dir(model_store):
        if name.startswith(".") or name == MODELS_CONFIG or not artifacts.is_name(name):
            continue  # not a model tfpipe could have pushed (a hostile store may hold anything)
        children = storage.list_dir(storage.join(model_store, name))
        if CHAMPION_FILE in children or any(c.isdigit() for c in children):
            found.append(name)
    return found


def _claimed(model_store: str, model_name: str) -> set[int]:
    root = artifacts.model_dir_uri(model_store, model_name)
    taken = {int(n) for n in storage.list_dir(root) if n.isdigit()}
    taken |= {int(n) for n in storage.list_dir(storage.join(root, CLAIMS)) if n.isdigit()}
    return taken


def _try_claim(model_store: str, model_name: str, version: int, owner: str) -> bool:
    uri = storage.join(artifacts.model_dir_uri(model_store, model_name), CLAIMS, str(version))
    if storage.is_s3(model_store):
        from botocore.exceptions import ClientError

        storage.require_conditional_writes(uri)
        bucket, key = storage.split_s3(uri)
        try:
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=owner.encode(), IfNoneMatch="*")
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in storage.PRECONDITION_FAILED:
                # Taken; or ours, when the answer to our own write was lost and the client sent it again.
                try:
                    return storage.read_bytes(uri) == owner.encode()
                except storage.ArtifactNotFoundError:
                    return False  # a concurrent writer's claim, not visible yet
            raise
    if storage.local_path(artifacts.model_version_uri(model_store, model_name, version)).exists():
        return False  # a version pushed before claims were files
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "wb") as claim:
        claim.write(owner.encode())
        claim.flush()
        os.fsync(claim.fileno())
    return True


def claimed_by(model_store: str, model_name: str, owner: str) -> int | None:
    """The version ``owner`` claimed earlier (its retry finishes it), or None."""
    root = storage.join(artifacts.model_dir_uri(model_store, model_name), CLAIMS)
    for name in sorted(storage.list_dir(root), key=lambda n: -int(n) if n.isdigit() else 0):
        if name.isdigit() and storage.read_bytes(storage.join(root, name)).decode("utf-8", "replace") == owner:
            return int(name)
    return None


def claim_version(model_store: str, model_name: str, owner: str, attempts: int = 100) -> int:
    """The version ``owner`` claimed before, else the next free number, claimed atomically."""
    mine = claimed_by(model_store, model_name, owner)
    if mine is not None:
        return mine
    for _ in range(attempts):
        candidate = max(_claimed(model_store, model_name), default=0) + 1
        if _try_claim(model_store, model_name, candidate, owner):
            return candidate
    raise ModelStoreError(f"could not claim a version of {model_name} in {model_store} after {attempts} attempts")


def champion_uri(model_store: str, model_name: str) -> str:
    return storage.join(artifacts.model_dir_uri(model_store, model_name), CHAMPION_FILE)


def read_champion(model_store: str, model_name: str) -> dict[str, Any] | None:
    """The champion record (``version``, ``since``, ``by``, ``reason``, ``history``), or None."""
    uri = champion_uri(model_store, model_name)
    if not storage.exists(uri):
        return None
    return json.loads(storage.read_bytes(uri))


def champion(model_store: str, model_name: str) -> tuple[int, str] | None:
    """``(version, uri)`` of the model being served: the champion pointer, or in a store that
    has none yet the latest complete version; None on a cold start."""
    record = read_champion(model_store, model_name)
    if record is not None:
        version = int(record["version"])
    else:
        done = versions(model_store, model_name)
        if not done:
            return None
        version = done[-1]
    return version, artifacts.model_version_uri(model_store, model_name, version)


@dataclass(frozen=True)
class ChampionChange:
    """What :func:`set_champion` did: ``previous`` is the champion before (None on a cold start)."""

    model_name: str
    version: int
    previous: int | None
    changed: bool
    record: dict[str, Any] = field(repr=False, default_factory=dict)
    before: dict[str, Any] | None = field(repr=False, default=None)  # the pointer as it was


def champion_state(model_store: str, model_name: str) -> tuple[int, int | None] | None:
    """``(version, generation)`` of the champion: the pointer's (its generation grows with every
    change, a rollback to the same number included), else, in a store without a pointer, the
    newest complete version with no generation; None on a cold start."""
    record = read_champion(model_store, model_name)
    if record is not None:
        return int(record["version"]), int(record.get("generation", 0))
    done = versions(model_store, model_name)
    return (done[-1], None) if done else None


def rolled_back_since(model_store: str, model_name: str, generation: int | None) -> bool:
    """Whether a rollback moved the champion after the pointer's ``generation`` (None: any time)."""
    record = read_champion(model_store, model_name)
    if record is None:
        return False
    for entry in [record, *reversed(record.get("history", []))]:
        if generation is not None and (entry.get("generation") is None or entry["generation"] <= generation):
            return False
        if entry.get("reason") == "rollback":
            return True
    return False


def describe_state(state: tuple[int, int | None] | None) -> str:
    if state is None:
        return "no champion"
    return f"v{state[0]}" + (f" (champion change {state[1]})" if state[1] is not None else "")


def set_champion(model_store: str, model_name: str, version: int, by: str, reason: str,
                 only_if_newer: bool = False, expected: Any = ANY,
                 fallback: tuple[int, int | None] | None = None, operation: str | None = None,
                 pending_seconds: float | None = None) -> ChampionChange:
    """Make ``version`` the champion; concurrent updates are serialized (see :func:`storage.update_json`).

    Args:
        only_if_newer: Leave a newer champion in place.
        expected: Compare-and-swap (a push): promote only while the champion is this
            :func:`champion_state` (None: there is none), the one the blessing was evaluated
            against. Already ``version`` (a retry that got this far) is no change and no error.
        fallback: The champion state to compare with when no pointer exists yet (the newest
            complete version before this one was pushed).
        operation: What made the change (a DAG run), recorded so that its retry can tell it did.
        pending_seconds: A push's promotion is *pending* until :func:`commit_promotion`, at most
            this long: a promotion whose process died is reverted by :func:`revert_pending`.

    Raises:
        ModelStoreError: ``version`` is not a complete version of the model.
        StaleBlessingError: The champion is not ``expected``.
    """
    if version not in versions(model_store, model_name):
        raise ModelStoreError(f"{model_name} has no complete version {version} in {model_store} "
                              f"(versions: {versions(model_store, model_name) or 'none'})")
    before: dict[str, Any] = {}

    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        before["record"] = current
        if current is not None and version in current.get("retiring", []):
            raise ModelStoreError(f"{model_name} v{version} is being removed by retention; it cannot become champion")
        served = (current["version"], current.get("generation", 0)) if current is not None else fallback
        if served is not None and served[0] == version:
            return None
        if expected is not ANY and served != expected:
            raise StaleBlessingError(
                f"{model_name} v{version} is not promoted: the champion is {describe_state(served)}, while its "
                f"blessing was evaluated against {describe_state(expected)} (a rollback or another push came in "
                "between); evaluate again (trigger a new run) to push it")
        if current is not None and only_if_newer and current["version"] > version:
            return None
        stamp = now()
        history = list(current.get("history", [])) if current else []
        if current is not None:
            history.append({k: current.get(k) for k in HISTORY_KEYS} | {"until": stamp})
        record = {"model": model_name, "version": version, "since": stamp, "by": by, "reason": reason,
                  "operation": operation, "generation": (current or {}).get("generation", 0) + 1,
                  "history": history[-HISTORY_LIMIT:]}
        if current is not None and current.get("retiring"):
            record["retiring"] = current["retiring"]
        if pending_seconds is not None:
            record["pending_until"] = _in(pending_seconds)
        return record

    record = storage.update_json(champion_uri(model_store, model_name), change)
    previous = before["record"]["version"] if before.get("record") else None
    if previous == version and record.get("by") == by and (
            "pending_until" in record or (operation is not None and record.get("operation") == operation)):
        # The pointer is already this change's (a retry, or a write whose answer was lost and that
        # was sent again): what it replaced is its history's last entry.
        previous = int(record["history"][-1]["version"]) if record.get("history") else None
    return ChampionChange(model_name, int(record["version"]), previous, record["version"] == version and
                          previous != version, record, before.get("record"))


def rollback_target(model_store: str, model_name: str) -> int:
    """The version a rollback without ``--to`` returns to: the latest earlier champion that is
    older than the current one and still in the store, else the newest older version."""
    record = read_champion(model_store, model_name)
    if record is None:
        raise ModelStoreError(f"{model_name} has no champion in {model_store}: nothing to roll back")
    current = int(record["version"])
    available = set(versions(model_store, model_name))
    for entry in reversed(record.get("history", [])):
        if entry["version"] < current and entry["version"] in available:
            return int(entry["version"])
    older = sorted(v for v in available if v < current)
    if not older:
        raise ModelStoreError(f"{model_name} v{current} is the oldest version in {model_store}: nothing to roll back to")
    return older[-1]


def delete_version(model_store: str, model_name: str, version: int) -> None:
    """Remove a version; ``saved_model.pb`` goes first, so it stops counting as complete at once."""
    uri = artifacts.model_version_uri(model_store, model_name, version)
    if storage.is_s3(uri):
        storage.delete_file(storage.join(uri, SAVED_MODEL_PB))
        storage.delete_dir(uri)
        return
    path = storage.local_path(uri)
    if path.is_dir():
        doomed = path.with_name(f".{path.name}.deleted-{uuid.uuid4().hex[:8]}")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def discard_version(model_store: str, model_name: str, version: int) -> None:
    """Remove a version that must never be served (it failed a check). Its number stays
    claimed: on S3 by its claim, locally by the emptied directory."""
    uri = artifacts.model_version_uri(model_store, model_name, version)
    if storage.is_s3(uri):
        delete_version(model_store, model_name, version)
        return
    root = storage.local_path(uri)
    (root / SAVED_MODEL_PB).unlink(missing_ok=True)
    for child in root.iterdir() if root.is_dir() else ():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def undo_promotion(model_store: str, model_name: str, change: ChampionChange) -> bool:
    """Put the pointer back exactly as it was before ``change`` (its generation too, so a blessing
    evaluated against that champion is valid again), if nothing changed it since. Returns whether
    it did; without a previous pointer the pointer is removed."""
    uri = champion_uri(model_store, model_name)
    if change.before is None:  # a cold start: no champion again
        current = read_champion(model_store, model_name)
        if current is None or current.get("generation") != change.record.get("generation"):
            return False
        storage.delete_file(uri)
        return True
    undone = {"done": False}

    def back(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None or current.get("generation") != change.record.get("generation"):
            return None  # someone else changed it since: theirs stands
        undone["done"] = True
        return {**change.before, **({"retiring": current["retiring"]} if current.get("retiring") else {})}

    storage.update_json(uri, back)
    return undone["done"]


class PromotionRevertedError(ModelStoreError):
    """A push's pending promotion was reverted before it was committed (its lease had expired)."""


def commit_promotion(model_store: str, model_name: str, version: int, owner: str) -> None:
    """End a push's pending promotion: ``version`` is champion for good (a committed one: no change).

    Raises:
        PromotionRevertedError: The promotion is no longer there (reverted, or replaced since).
    """
    def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
        if current is None or int(current["version"]) != version or current.get("by") != owner:
            raise PromotionRevertedError(
                f"{model_name} v{version}: its promotion by {owner} was reverted before it was committed (the "
                f"champion is {describe_state(champion_state(model_store, model_name))})")
        if "pending_until" not in current:
            return None
        return {k: v for k, v in current.items() if k != "pending_until"}

    storage.update_json(champion_uri(model_store, model_name), change)


def pending_promotion(model_store: str, model_name: str) -> dict[str, Any] | None:
    """The champion pointer while a push's promotion of it is not committed, else None."""
    record = read_champion(model_store, model_name)
    return record if record is not None and "pending_until" in record else None


def revert_pending(model_store: str, model_name: str, operation: str | None = None) -> dict[str, Any] | None:
    """Put back the champion a push replaced when that push never committed: the push of
    ``operation`` (its DAG run failed, or it failed itself), else any push whose lease expired
    (its process died). The pointer returns exactly as it was, generation included; a version
    promoted in a store that had no pointer is discarded (it would otherwise serve as the newest).

    Returns:
        The reverted pointer (what was pending), or None when there was nothing to revert.
    """
    reverted: dict[str, Any] = {}

    def due(current: dict[str, Any] | None) -> bool:
        if current is None or "pending_until" not in current:
            return False
        return current.get("by") == operation if operation is not None else _expired(current["pending_until"])

    if not due(read_champion(model_store, model_name)):
        return None  # the common case, read only (a serving-sync mirror may not write)

    def back(current: dict[str, Any] | None) -> dict[str, Any] | None:
        reverted.clear()
        if not due(current):
            return None
        reverted.update(current)
        history = list(current.get("history", []))
        if not history:
            return None  # a cold start: the pointer is removed below
        last = history.pop()
        return {"model": model_name, **{k: last.get(k) for k in HISTORY_KEYS}, "history": history,
                **({"retiring": current["retiring"]} if current.get("retiring") else {})}

    uri = champion_uri(model_store, model_name)
    written = storage.update_json(uri, back)
    if reverted and not reverted.get("history"):  # a cold start: no champion again
        discard_version(model_store, model_name, int(reverted["version"]))
        storage.delete_file(uri)
        written = None
    if reverted:
        log.warning("%s: the promotion of v%s by %s was not committed; reverted, %s is champion again", model_name,
                    reverted["version"], reverted.get("by"), f"v{written['version']}" if written else "no version")
    return dict(reverted) or None


def apply_retention(model_store: str, model_name: str, keep: int,
                    grace_seconds: float = UNPROMOTED_GRACE_SECONDS) -> list[int]:
    """Remove complete versions older than the champion beyond the newest ``keep``.

    The versions are first marked ``retiring`` in the champion pointer by a conditional update, and
    :func:`set_champion` refuses a retiring version: a rollback racing with retention either moves
    the pointer first (retention then keeps its target) or is refused, never served a deleted
    version. The version a pending promotion would revert to is kept too, and so is a version that
    was never champion and was pushed less than ``grace_seconds`` ago: a push that lost the
    compare-and-swap to a newer version is gated again and may still promote it.

    Returns:
        The versions removed.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    chosen: list[int] = []
    young: dict[int, bool] = {}

    def in_flight(version: int, current: dict[str, Any]) -> bool:
        if version in {int(h["version"]) for h in current.get("history", [])}:
            return False  # it was champion once: a push is done with it
        if version not in young:
            young[version] = _pushed_within(model_store, model_name, version, grace_seconds)
        return young[version]

    def mark(current: dict[str, Any] | None) -> dict[str, Any] | None:
        chosen.clear()
        if current is None:
            return None  # no explicit champion yet: nothing is known to be replaced
        done = versions(model_store, model_name)
        kept = set(done[-keep:]) | {int(current["version"])}
        if "pending_until" in current and current.get("history"):
            kept.add(int(current["history"][-1]["version"]))
        chosen.extend(v for v in done if v not in kept and v < int(current["version"]) and not in_flight(v, current))
        if not chosen:
            return None
        return {**current, "retiring": sorted(set(current.get("retiring", [])) | set(chosen))}

    uri = champion_uri(model_store, model_name)
    current = storage.update_json(uri, mark) if storage.exists(uri) else None
    for version in chosen:
        delete_version(model_store, model_name, version)
        log.info("retention: removed %s v%d (champion v%d, keeping %d)", model_name, version, current["version"], keep)
    if chosen:
        storage.update_json(uri, lambda record: None if record is None else {
            **record, "retiring": [v for v in record.get("retiring", []) if v not in chosen]})
    return list(chosen)


def _pushed_within(model_store: str, model_name: str, version: int, seconds: float) -> bool:
    """Whether the version's manifest says it was pushed less than ``seconds`` ago (a manifest
    without ``pushed_at``, written before it was recorded, counts as old)."""
    try:
        stamp = read_manifest(artifacts.model_version_uri(model_store, model_name, version)).get("pushed_at")
    except (storage.ArtifactNotFoundError, ValueError, AttributeError):
        return False
    try:
        pushed = calendar.timegm(time.strptime(stamp, STAMP_FORMAT))
    except (TypeError, ValueError):
        return False
    return time.time() - pushed < seconds


def read_manifest(version_uri: str) -> dict[str, Any]:
    """The pushed version's manifest: ``{"files": {path: {"size", "sha256"}}, ...}``."""
    return json.loads(storage.read_bytes(storage.join(version_uri, MANIFEST_FILE)))


def manifest_mismatches(local: Path, manifest: dict[str, Any]) -> list[str]:
    """What in a local copy of a version differs from its manifest (empty: every file matches)."""
    problems = []
    for rel, entry in manifest["files"].items():
        path = local / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != entry["size"] or storage.sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} differs from the manifest (size or SHA-256)")
    return problems


