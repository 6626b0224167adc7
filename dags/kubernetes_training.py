"""The ``train_model`` task of a pipeline whose ``train.runner`` is ``kubernetes``.

It runs the training step, which submits the training Job (an Indexed Job and a headless
Service, :mod:`tasks.training.kubernetes_runner`) and raises ``TrainingSubmitted``; the task then
defers on the cncf.kubernetes provider's ``KubernetesJobTrigger`` until the Job ends, holding no
worker slot, and runs the step again: it reads the chief's result and logs the model, or raises
the Job's failure (the task's next try submits a new Job, which resumes from the checkpoints).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from airflow.sdk import BaseOperator

from dags.airflow_support import run_context, tfpipe_step


def hook_cluster(conn_id: str) -> Any:
    """The training Jobs' cluster through the cncf.kubernetes provider's hook and connection ``conn_id``."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook

    from tasks.training.kubernetes_runner import Cluster

    hook = KubernetesHook(conn_id=conn_id)
    return Cluster(hook.core_v1_client, hook.batch_v1_client)


class KubernetesTrainModel(BaseOperator):
    """``train_model`` as a deferrable operator; ``examples`` and ``validation`` are the upstream records."""

    template_fields = ("examples", "validation")

    def __init__(self, *, pipeline_file: str, examples: Any, validation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline_file, self.examples, self.validation = pipeline_file, examples, validation

    def execute(self, context: Any) -> Any:
        return self._run_step(context)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        """The Job ended: the step reads its result (or its failure, from the Job itself)."""
        if (event or {}).get("status") != "success":
            self.log.warning("the training Job ended without success: %s", (event or {}).get("message"))
        return self._run_step(context)

    def _run_step(self, context: Any) -> Any:
        from tasks import pipeline as steps
        from tasks.training.kubernetes_runner import TrainingSubmitted

        @tfpipe_step
        def train_model() -> Any:
            ctx = run_context(self.pipeline_file, context["params"], context["run_id"], context.get("ds"),
                              context["ti"])
            ctx = dataclasses.replace(ctx, kubernetes=hook_cluster)
            return steps.run_step("train_model", ctx, self.examples, self.validation)

        try:
            return train_model()
        except TrainingSubmitted as job:
            from airflow.providers.cncf.kubernetes.triggers.job import KubernetesJobTrigger

            from tasks.training.kubernetes_runner import CONTAINER

            self.log.info("waiting for training Job %s/%s (the task defers)", job.namespace, job.job)
            self.defer(trigger=KubernetesJobTrigger(
                job_name=job.job, job_namespace=job.namespace, pod_names=[], pod_namespace=job.namespace,
                base_container_name=CONTAINER, kubernetes_conn_id=job.conn_id, poll_interval=job.poll_seconds,
                get_logs=False, do_xcom_push=False,
            ), method_name="execute_complete")
