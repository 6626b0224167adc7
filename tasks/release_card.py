"""The model card of a pushed version (:mod:`tasks.release.model_card`), written by ``push_model``
once its version is champion: gathered from the run's records, logged to the push run as
``model_card/model_card.md`` and ``model_card/model_card.html``, and summarized in the registry
version's description with a link to the page."""

from __future__ import annotations

import logging
from typing import Any

from tasks import storage
from tasks.artifacts import Blessing, ExamplesArtifact, ModelArtifact, OptimizedArtifact
from tasks.context import RunContext, code_version, data_version
from tasks.tracking import MlflowTracker

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
STATISTICS_FILE = "FeatureStats.pb"


def _statistics(ctx: RunContext) -> list[dict[str, Any]]:
    """The train split's feature statistics that validate_data published, if this run has them."""
    from tasks.release.model_card import feature_statistics

    uri = storage.join(ctx.output("statistics"), "train", STATISTICS_FILE)
    try:
        return feature_statistics(storage.read_bytes(uri))
    except storage.ArtifactNotFoundError:
        return []


def card_facts(ctx: RunContext, tracker: MlflowTracker, examples: ExamplesArtifact, model: ModelArtifact,
               blessing: Blessing, optimized: OptimizedArtifact | None, pushed: dict[str, Any]) -> dict[str, Any]:
    """Everything the card says, from the run's artifacts, the push's record and the audit trail."""
    from tasks.artifacts import Examples
    from tasks.release import audit
    from tasks.release.approval import approval_of
    from tasks.training.export import read_model_spec

    name = ctx.config.model_name
    version = int(pushed["version"]) if pushed.get("version") is not None else None  # None: a candidate
    history = audit.history(ctx.settings.model_store, name, version) if version is not None else []
    promoted = next((e for e in reversed(history) if e["event"] == "promoted" and e["to_version"] == version), None)
    return {
        "model_name": name, "version": version, "registry_version": pushed.get("registry_version"),
        "store_uri": pushed["uri"], "weights_sha256": pushed.get("weights_sha256"),
        "mlflow_model_id": model.mlflow_model_id,
        "pushed_at": promoted["at"] if promoted else "-", "by": f"{ctx.dag_id}/{ctx.run_id}", "run_id": ctx.run_id,
        "pipeline": ctx.config.name, "task": getattr(ctx.config.task, "value", ctx.config.task), "label": ctx.config.label,
        "code_version": code_version(), "data_version": data_version(examples.uri),
        "manifest": Examples.open(examples.uri).manifest, "statistics": _statistics(ctx),
        "model": model.to_dict(), "model_spec": read_model_spec(model.uri).to_dict(),
        "train_config": ctx.config.train.model_dump(mode="json"), "blessing": blessing.to_dict(),
        "optimized": optimized.report if optimized else None, "history": history,
        "approval": approval_of(ctx.settings.model_store, name, f"{ctx.dag_id}/{ctx.run_id}"),
        "links": _links(ctx, tracker),
    }


def _links(ctx: RunContext, tracker: MlflowTracker) -> dict[str, str]:
    links = {}
    if ctx.identity.dag_run_url():
        links["Airflow DAG run"] = ctx.identity.dag_run_url()
    if ctx.settings.mlflow_ui_url:
        from tasks.tracking import run_url

        experiment = tracker.client.get_run(tracker.run_id).info.experiment_id
        links["MLflow push run"] = run_url(ctx.settings.mlflow_ui_url, experiment, tracker.run_id)
    return links


def write_model_card(ctx: RunContext, tracker: MlflowTracker, facts: dict[str, Any]) -> dict[str, Any]:
    """Log the card to the push run and describe the registry version with it. Returns where it is.

    The version is champion already: a card that cannot be written is reported, never undoes it."""
    from tasks.release.model_card import description, render
    from tasks.tracking import artifact_url

    markdown, page = render(facts)
    tracker.log_text(markdown, f"{CARD_DIR}/model_card.md")
    tracker.log_text(page, f"{CARD_DIR}/model_card.html")
    run = tracker.client.get_run(tracker.run_id)
    url = artifact_url(ctx.settings.mlflow_ui_url, run.info.experiment_id, tracker.run_id,
                       f"{CARD_DIR}/model_card.html") if ctx.settings.mlflow_ui_url else None
    card_uri = f"{run.info.artifact_uri.rstrip('/')}/{CARD_DIR}/model_card.html"
    if facts.get("registry_version"):
        name, registry_version = facts["model_name"], str(facts["registry_version"])
        tracker.client.update_model_version(name, registry_version, description=description(facts, url))
        tracker.client.set_model_version_tag(name, registry_version, "model_card", card_uri)
    tracker.set_tags({"tfpipe.model_card": card_uri})
    log.info("model card of %s v%s: %s", facts["model_name"], facts["version"], url or card_uri)
    return {"uri": card_uri, "url": url}


def write_candidate_card(ctx: RunContext, examples: ExamplesArtifact, model: ModelArtifact, blessing: Blessing,
                         optimized: OptimizedArtifact | None) -> str | None:
    """The card of a blessed model a reviewer is asked about (not pushed yet), on the pipeline run
    in MLflow; returns its page in the MLflow UI (None without a UI address)."""
    from tasks.context import tracking_for
    from tasks.release.model_card import render
    from tasks.tracking import artifact_url

    tracking = tracking_for(ctx.settings)
    parent = tracking.parent_run_id(ctx.identity)
    tracker = MlflowTracker(tracking.client, parent, parent)
    facts = card_facts(ctx, tracker, examples, model, blessing, optimized,
                       {"version": None, "uri": f"{model.uri} (not pushed: awaiting approval)"})
    markdown, page = render(facts)
    tracker.log_text(markdown, f"{CARD_DIR}/candidate.md")
    tracker.log_text(page, f"{CARD_DIR}/candidate.html")
    if not ctx.settings.mlflow_ui_url:
        return None
    experiment = tracking.client.get_run(parent).info.experiment_id
    return artifact_url(ctx.settings.mlflow_ui_url, experiment, parent, f"{CARD_DIR}/candidate.html")
