"""The ``approve_release`` task of a pipeline with ``push.approval: required``: Airflow's
human-in-the-loop approval between ``optimize_model`` and ``push_model``.

The reviewer sees the blessing (every check against the trivial baseline and the champion), the
metrics side by side and links to the candidate's model card and the MLflow runs, and answers in the Airflow UI (or through the
REST API, ``PATCH .../taskInstances/approve_release/-1/hitlDetails``) with Approve or Reject and a
reason. The decision goes to the model's audit trail (``tfpipe history MODEL``) and to MLflow;
a rejection skips ``push_model``, so nothing of the model is served. The push itself also reads the
decision from the trail: without an approval of its own DAG run it pushes nothing. Unanswered
within ``push.approval_timeout_hours``, the model is rejected.

Subject and body are built when the task runs, from the run's records: they are never Jinja
templates, so nothing the data says can be template code.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from dags.airflow_support import MLFLOW_RUN_URL, run_context

TASK_ID = "approve_release"
REASON = "reason"


class ReleaseApproval(ApprovalOperator):
    """Approve or reject a blessed model before ``push_model``; the decision is recorded."""

    def __init__(self, *, pipeline_file: str, model_name: str, timeout_hours: float, **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params; the reviewer's form holds only the reason
        super().__init__(
            task_id=TASK_ID,
            subject=f"Release {model_name}?",
            body=None,
            defaults=ApprovalOperator.REJECT,  # what an unanswered request becomes at its timeout
            params={REASON: Param("", type="string", maxLength=1000,
                                  description="Why: kept in the audit trail, MLflow and the model card.")},
            response_timeout=timedelta(hours=timeout_hours),
            **kwargs,
        )
        self.pipeline_file = pipeline_file

    def _ctx(self, context):
        return run_context(self.pipeline_file, context["params"], context["run_id"], context.get("ds"), context["ti"])

    def execute(self, context):
        from tasks.release_review import review_request

        ti = context["ti"]
        records = {step: ti.xcom_pull(task_ids=step)
                   for step in ("ingest_examples", "train_model", "evaluate_model", "optimize_model")}
        links = {label: url for label, url in (
            ("MLflow evaluate_model run (plots, metrics)", ti.xcom_pull(task_ids="evaluate_model", key=MLFLOW_RUN_URL)),
            ("MLflow optimize_model run (variants)", ti.xcom_pull(task_ids="optimize_model", key=MLFLOW_RUN_URL)),
        ) if url}
        self.subject, self.body = review_request(self._ctx(context), records, links)
        return super().execute(context)

    def execute_complete(self, context, event: dict[str, Any]) -> Any:
        from tasks.release_review import record_approval

        chosen = event.get("chosen_options") or []
        user = event.get("responded_by_user") or {}
        reviewer = (user.get("name") or user.get("id")) if isinstance(user, dict) else (str(user) if user else None)
        reason = str((event.get("params_input") or {}).get(REASON) or "")
        if "error" in event:
            reason = f"no answer: {event.get('error_type', 'error')}"
        approved = chosen == [self.APPROVE] and "error" not in event
        record_approval(self._ctx(context), approved, reviewer, reason,
                        {"chosen_options": chosen, "responded_at": str(event.get("responded_at") or "")})
        return super().execute_complete(context, event)
