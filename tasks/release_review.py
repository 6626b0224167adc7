"""The reviewer's side of ``push.approval: required``: what the approval task shows, and the
decision recorded in the model's audit trail (:mod:`tasks.release.approval`) and on the pipeline
run in MLflow (tags ``tfpipe.approval``; a rejection also ends it as ``rejected``)."""

from __future__ import annotations

import logging
from typing import Any

from tasks.artifacts import Blessing
from tasks.context import RunContext, end_pipeline, tracking_for

log = logging.getLogger(__name__)


def review_request(ctx: RunContext, blessing: dict[str, Any], links: dict[str, str]) -> tuple[str, str]:
    """The approval task's subject and body for this run's blessed model."""
    from tasks.release import model_store
    from tasks.release.approval import review_body

    name = ctx.config.model_name
    state = model_store.champion_state(ctx.settings.model_store, name)
    subject = f"Release {name}: push the model of run {ctx.run_id}?"
    return subject, review_body(name, Blessing.of(blessing), state[0] if state else None, links)


def record_approval(ctx: RunContext, approved: bool, reviewer: str | None, reason: str,
                    details: dict[str, Any]) -> dict[str, Any]:
    """Record the reviewer's decision (audit trail, then MLflow); returns the audit event."""
    from tasks.release.approval import record_decision

    event = record_decision(ctx.settings.model_store, ctx.config.model_name, approved, reviewer, reason,
                            f"{ctx.dag_id}/{ctx.run_id}", details)
    tracking = tracking_for(ctx.settings)
    parent = tracking.parent_run_id(ctx.identity)
    line = f"{event['event']} by {event['by']} at {event['at']}: {event['reason']}"
    tracking.client.set_tag(parent, "tfpipe.approval", line[:5000])
    if not approved:
        from tasks.tracking import MlflowTracker

        end_pipeline(ctx, MlflowTracker(tracking.client, parent, parent), "rejected")
    log.info("%s of run %s: %s", ctx.config.model_name, ctx.run_id, line)
    return event
