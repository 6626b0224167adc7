"""The reviewer's side of ``push.approval: required``: what the approval task shows, and the
decision recorded in the model's audit trail (:mod:`tasks.release.approval`) and on the pipeline
run in MLflow (tags ``tfpipe.approval``; a rejection also ends it as ``rejected``)."""

from __future__ import annotations

import logging
from typing import Any

from tasks.artifacts import Blessing, ExamplesArtifact, ModelArtifact, OptimizedArtifact
from tasks.context import RunContext, end_pipeline, tracking_for

log = logging.getLogger(__name__)


def review_request(ctx: RunContext, records: dict[str, Any], links: dict[str, str]) -> tuple[str, str]:
    """The approval task's subject and body for this run's blessed model; ``records`` are the
    steps' records (their XComs), from which the candidate's model card is written first."""
    from tasks.release import model_store
    from tasks.release.approval import review_body
    from tasks.release_card import write_candidate_card

    name = ctx.config.model_name
    blessing = Blessing.of(records["evaluate_model"])
    try:
        card = write_candidate_card(ctx, ExamplesArtifact.of(records["ingest_examples"]),
                                    ModelArtifact.of(records["train_model"]), blessing,
                                    OptimizedArtifact.of(records["optimize_model"]) if records.get("optimize_model")
                                    else None)
    except Exception as error:  # noqa: BLE001 - the reviewer still gets the blessing and the runs
        log.warning("the candidate's model card could not be written: %s: %s", type(error).__name__, error)
        card = None
    state = model_store.champion_state(ctx.settings.model_store, name)
    subject = f"Release {name}: push the model of run {ctx.run_id}?"
    return subject, review_body(name, blessing, state[0] if state else None,
                                {**({"Model card (candidate)": card} if card else {}), **links})


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
