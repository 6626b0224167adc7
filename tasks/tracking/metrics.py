"""Metrics that arrive while a step runs: training progress in batches, the machine's usage, and
``tfpipe bench`` results as runs of their own."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from tasks.tracking.names import EXPERIMENT_KIND, MODEL_TRAINING
from tasks.tracking.runs import MlflowTracker


class BatchedProgress:
    """Training progress into MLflow in batches: a ``log_batch`` every few seconds, not a call per step.

    Per step: ``step_loss`` and ``learning_rate`` (MLflow step = global step). Per epoch:
    ``loss``, ``eval_loss``, ``eval_accuracy``, ``epoch_seconds`` (MLflow step = epoch).
    """

    def __init__(self, tracker: MlflowTracker, flush_seconds: float = 5.0, max_points: int = 1000) -> None:
        self.tracker = tracker
        self.flush_seconds = flush_seconds
        self.max_points = max_points
        self.pending: list[Any] = []
        self.requests = 0
        self.points = 0
        self._last_flush = time.monotonic()

    @classmethod
    @contextmanager
    def for_run(cls, tracking_uri: str, run_id: str) -> Iterator[BatchedProgress]:
        from mlflow import MlflowClient

        progress = cls(MlflowTracker(MlflowClient(tracking_uri=tracking_uri), run_id))
        try:
            yield progress
        finally:
            progress.flush()

    def _add(self, name: str, value: float, step: int) -> None:
        from mlflow.entities import Metric

        if math.isfinite(value):
            self.pending.append(Metric(name, float(value), int(time.time() * 1000), int(step)))

    def on_steps(self, first_step: int, losses: list[float], learning_rate: float) -> None:
        for i, loss in enumerate(losses):
            self._add("step_loss", loss, first_step + i)
        self._add("learning_rate", learning_rate, first_step)
        if len(self.pending) >= self.max_points or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def on_epoch(self, epoch: int, record: Mapping[str, float]) -> None:
        for key, value in record.items():
            if key not in ("epoch", "step"):
                self._add("epoch_seconds" if key == "seconds" else key, value, epoch)
        self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), 1000):  # MLflow's limit per log_batch
            self.tracker.client.log_batch(self.tracker.run_id, metrics=self.pending[start:start + 1000])
            self.requests += 1
        self.points += len(self.pending)
        self.pending = []
        self._last_flush = time.monotonic()



@contextmanager
def system_metrics(tracking_uri: str, run_id: str, node_id: str, interval: float = 2.0) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU) usage of this process's machine, logged to ``run_id``
    as ``system/<node_id>/...`` so the workers of one training stay apart."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, samples_before_logging=1,
                                   node_id=node_id, tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()



def log_benchmark(tracking_uri: str, result: Mapping[str, Any], table: str, artifact_location: str | None = None,
                  experiment: str = "tfpipe-bench") -> str:
    """A ``tfpipe bench`` result as an MLflow run of its own: params, throughputs, ratios, the JSON and table."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
    suite = result["suite"]
    run = client.create_run(experiment_id, run_name=f"bench-{suite}",
                            tags={"tfpipe.role": "benchmark", "tfpipe.bench_suite": suite})
    tracker = MlflowTracker(client, run.info.run_id)
    tracker.log_params({"params": result.get("params", {}), "machine": result.get("machine", {})})
    metrics = {f"{name}.throughput": row["throughput"] for name, row in result["variants"].items()}
    metrics |= {f"{name}.peak_rss_mb": row["peak_rss_mb"] for name, row in result["variants"].items()}
    metrics |= {f"ratio.{name.replace('/', '_over_')}": value for name, value in result.get("ratios", {}).items()}
    tracker.log_metrics(metrics)
    # "ours/naive >= 5": True  ->  tag target.ours/naive = "met (>= 5)" (MLflow keys allow no ">=")
    tracker.set_tags({
        f"target.{name.partition(' ')[0]}": f"{'met' if ok else 'missed'} ({name.partition(' ')[2]})"
        for name, ok in result.get("targets", {}).items()
    })
    tracker.log_dict(dict(result), f"bench/{suite}.json")
    tracker.log_text(table, f"bench/{suite}.txt")
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id
