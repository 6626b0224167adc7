"""The audit trail of a model's champion: every change (a push's promotion, a rollback, a reverted
promotion) and every approval decision, as one event each.

::

    <store>/<model>/.audit/<time>-<event>-<id>.json

* One object per event, written once and never changed: nothing is read-modified-written, so
  concurrent writers (on S3 too) cannot lose each other's events.
* Retention removes version folders only; the trail stays, for versions long gone too. The
  champion pointer keeps its own short history for rollbacks; this is the record of who did what.
* An event: ``event`` (promoted, rolled_back, reverted, approved, rejected), ``at`` (UTC),
  ``by`` (a DAG run ``dag_id/run_id``, a reviewer, ``cli:$USER``), ``from_version`` and
  ``to_version`` (the champion before and after; None where there was none), ``reason``,
  ``operation`` (what made it: a DAG run) and ``details``.
* A retry of one operation records its event once (:func:`record` finds it).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from tasks import artifacts, storage

log = logging.getLogger(__name__)

AUDIT_DIR = ".audit"
EVENTS = ("promoted", "rolled_back", "reverted", "approved", "rejected")
_FILE = re.compile(r"^\d{8}T\d{12}Z-[a-z_]+-[0-9a-f]{8}\.json$")


def audit_uri(model_store: str, model_name: str) -> str:
    return storage.join(artifacts.model_dir_uri(model_store, model_name), AUDIT_DIR)


def _stamp() -> tuple[str, str]:
    """The time now: as recorded (ISO 8601, UTC) and as a file name prefix (sortable, microseconds)."""
    now = time.time()
    whole = time.gmtime(now)
    micros = int((now % 1) * 1_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", whole) + f".{micros:06d}Z",
            time.strftime("%Y%m%dT%H%M%S", whole) + f"{micros:06d}Z")


def record(model_store: str, model_name: str, event: str, by: str, from_version: int | None,
           to_version: int | None, reason: str, operation: str | None = None,
           details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Append one event to the trail of ``model_name`` and return it. An event of ``operation``
    already recorded (its retry) is returned instead of written again."""
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}: one of {', '.join(EVENTS)}")
    if operation is not None:
        for earlier in history(model_store, model_name):
            if (earlier["event"], earlier.get("operation"), earlier.get("to_version")) == (event, operation, to_version):
                return earlier
    at, prefix = _stamp()
    entry = {"event": event, "model": model_name, "at": at, "by": by, "from_version": from_version,
             "to_version": to_version, "reason": reason, "operation": operation, "details": details or {}}
    name = f"{prefix}-{event}-{uuid.uuid4().hex[:8]}.json"
    storage.write_bytes(storage.join(audit_uri(model_store, model_name), name),
                        json.dumps(entry, indent=2, sort_keys=True).encode())
    log.info("audit: %s %s: %s -> %s by %s (%s)", model_name, event, _v(from_version), _v(to_version), by, reason)
    return entry


def history(model_store: str, model_name: str, version: int | None = None) -> list[dict[str, Any]]:
    """The events of ``model_name``, oldest first (only those involving ``version``, if given).
    A file that is not an event (a hostile or damaged store) is skipped with a warning."""
    root = audit_uri(model_store, model_name)
    events = []
    for name in storage.list_dir(root):
        if not _FILE.match(name):
            continue
        try:
            entry = json.loads(storage.read_bytes(storage.join(root, name)))
            if not isinstance(entry, dict) or entry.get("event") not in EVENTS:
                raise ValueError("not an audit event")
        except (ValueError, storage.ArtifactNotFoundError) as error:
            log.warning("skipping %s in the audit trail of %s: %s", name, model_name, error)
            continue
        if version is None or version in (entry.get("from_version"), entry.get("to_version")):
            events.append(entry)
    return events


def _v(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def describe(entry: dict[str, Any]) -> str:
    """One line: when, what, from which version to which, who, why."""
    return (f"{entry['at']}  {entry['event']:<11}  {_v(entry.get('from_version')):>5} -> "
            f"{_v(entry.get('to_version')):<5}  by {entry['by']}: {entry.get('reason') or '-'}")


def format_history(model_name: str, events: list[dict[str, Any]]) -> str:
    """``tfpipe history``'s table."""
    if not events:
        return f"{model_name}: no champion change or approval is recorded"
    return "\n".join([f"{model_name}: {len(events)} event(s), oldest first", *map(describe, events)])
