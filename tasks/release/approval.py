"""A reviewer's approval before a blessed model is pushed (``push.approval: required``).

Airflow asks (the DAG's ``approve_release`` task, a human-in-the-loop approval: see
``dags/approval.py``); this module says what the reviewer reads (:func:`review_body`) and keeps the
decision in the model's audit trail (:func:`record_decision`), where the push looks for it
(:func:`approval_of`): a run whose model nobody approved is never pushed, however its push task
was started. Nothing here knows Airflow or MLflow.
"""

from __future__ import annotations

from typing import Any

from tasks.artifacts import Blessing
from tasks.release import audit, model_store

APPROVE, REJECT = "Approve", "Reject"


def _cell(value: Any) -> str:
    """A Markdown table cell holding data (a slice's value): no column break, no markup."""
    text = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
    for char in "\\|`*[]<>":
        text = text.replace(char, f"\\{char}")
    return text.replace("\n", " ")


def review_body(model_name: str, blessing: Blessing, champion: int | None, links: dict[str, str]) -> str:
    """What the reviewer reads in the Airflow UI (Markdown): the verdict, every check against the
    trivial baseline and the champion, the metrics side by side, and where to look further."""
    lines = [f"The gate **{'blessed' if blessing.blessed else 'did not bless'}** this model of "
             f"`{_cell(model_name)}`, compared with "
             + (f"the champion **v{champion}**." if champion is not None else "no champion (nothing serves yet)."),
             "", "| metric | slice | check | value | bound | trivial | champion | result |", "|---|---|---|---|---|---|---|---|"]
    for check in blessing.checks:
        result = {True: "passed", False: "FAILED", None: f"skipped: {check.note or '-'}"}[check.passed]
        lines.append("| " + " | ".join(_cell(v) for v in (check.metric, check.slice or "(overall)", check.kind,
                                                           check.value, check.bound, check.trivial, check.baseline,
                                                           result)) + " |")
    champion_metrics = (blessing.baseline or {}).get("metrics") or {}
    trivial_metrics = (blessing.trivial or {}).get("metrics") or {}
    lines += ["", "| metric | this model | trivial baseline | champion |", "|---|---|---|---|"]
    lines += [f"| {_cell(m)} | {_cell(v)} | {_cell(trivial_metrics.get(m))} | {_cell(champion_metrics.get(m))} |"
              for m, v in sorted(blessing.metrics.items()) if m != "example_count"]
    if links:
        lines += ["", *(f"- {label}: {url}" for label, url in links.items())]
    lines += ["", "Approve to push and serve it; Reject (give a reason) to keep what serves now."]
    return "\n".join(lines)


def record_decision(model_store_uri: str, model_name: str, approved: bool, reviewer: str | None, reason: str,
                    operation: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The decision as an audit event (``approved`` or ``rejected``) of ``operation`` (the DAG run):
    who, when, why, and which champion it was weighed against."""
    state = model_store.champion_state(model_store_uri, model_name)
    return audit.record(model_store_uri, model_name, "approved" if approved else "rejected",
                        reviewer or "nobody (the approval timed out)", state[0] if state else None, None,
                        reason or ("approved" if approved else "rejected without a reason"), operation=operation,
                        details=details)


def approval_of(model_store_uri: str, model_name: str, operation: str) -> dict[str, Any] | None:
    """The latest decision on ``operation``'s model, or None when there is none."""
    decisions = [e for e in audit.history(model_store_uri, model_name)
                 if e["event"] in ("approved", "rejected") and e.get("operation") == operation]
    return decisions[-1] if decisions else None
