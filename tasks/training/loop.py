"""train_model: a custom ``tf.GradientTape`` loop under a ``tf.distribute`` strategy.

It reads as its phases: plan (devices, strategy, batch size, datasets), build the model and
optimizer, restore the loop's state from the latest checkpoint, train epoch by epoch
(checkpoints, progress, evaluation, early stopping), export the SavedModel. Each phase lives in
a module of this package:

* :mod:`~tasks.training.distribution`: the cluster role, devices, strategy, mixed precision;
* :mod:`~tasks.training.optimization`: loss, learning-rate schedule, optimizer;
* :mod:`~tasks.training.steps`: the compiled train and eval steps, and the batches they read;
* :mod:`~tasks.training.checkpoints`: the loop's state, checkpoints and their copy on S3;
* :mod:`~tasks.training.export`: the SavedModel and what is published beside it.

**Fault tolerance:** a checkpoint every ``train.checkpoint_every_steps`` steps and at each
epoch's end; a retried task restores the latest one and resumes at that step, mid-epoch.
**Chief-only writes:** under ``multi_worker`` every worker runs this loop and takes part in
saving, but only the chief writes where others read; under ``parameter_server`` only the chief
runs it, scheduling steps on the workers.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

from tasks import storage
from tasks.artifacts import SAVED_MODEL_DIR, TENSORBOARD_DIR, Examples, ModelArtifact
from tasks.config import TrainConfig
from tasks.progress import report
from tasks.training.checkpoints import CheckpointMirror, LoopState, restore_checkpoints
from tasks.training.distribution import (WorkerRole, Writer, configure_devices, make_strategy, resolve_strategy,
                                         sum_across_workers, apply_graph_options, precision_policy, use_xla)
from tasks.training.export import export, float32_twin
from tasks.training.inputs import compressed_size, eval_dataset, should_cache
from tasks.training.profile import StepProfiler
from tasks.training.model import ModelSpec, build
from tasks.training.optimization import learning_rate_schedule, make_optimizer
from tasks.training.steps import Plan, Steps, train_iterator

log = logging.getLogger(__name__)

_PROGRESS_SECONDS = 10.0  # a progress line in the task log
BAR_SECONDS = 1.0  # a progress record for a terminal's bar


class Progress:
    """What the training loop reports; the chief's reports reach the task log and MLflow."""

    def on_steps(self, first_step: int, losses: list[float], learning_rate: float) -> None:
        """``losses[i]`` is the loss of step ``first_step + i``."""

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        """After each epoch's evaluation."""


def train_model(
    examples_uri: str,
    spec: ModelSpec,
    config: TrainConfig,
    output_uri: str,
    checkpoint_dir: Path,
    cache_dir: Path,
    work_dir: Path,
    progress: Progress | None = None,
    search_path: tuple[str, ...] = (),
    tf_config: str | None = None,
    checkpoint_uri: str | None = None,
) -> ModelArtifact:
    """Train (resuming from ``checkpoint_dir``), and publish the SavedModel at ``output_uri``.

    ``checkpoint_dir`` must be the same across tries of one run: a retry restores the latest
    checkpoint and continues from its step. ``tf_config`` is this process's ``TF_CONFIG``
    under ``multi_worker``; only the chief publishes, checkpoints and reports ``progress``.
    With ``checkpoint_uri`` an empty ``checkpoint_dir`` is first restored from the copy there
    (a try on another machine, a pod on a fresh disk) and the chief copies every checkpoint
    there (:class:`CheckpointMirror`).

    Raises:
        ValueError: The train split holds fewer examples than one global batch, or
            ``train.model_fn`` cannot be loaded.
    """
    role = WorkerRole.from_tf_config(tf_config)
    plan = plan_training(examples_uri, spec, config, role, cache_dir)
    if checkpoint_uri:
        restore_checkpoints(checkpoint_dir, checkpoint_uri)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    writer = Writer(role, checkpoint_dir)
    model, schedule, optimizer = build_model_and_optimizer(spec, config, plan, search_path)
    state = LoopState(model, optimizer, checkpoint_dir, writer)
    resumed_from = state.restore()
    mirror = CheckpointMirror(checkpoint_dir, checkpoint_uri) if checkpoint_uri and role.is_chief else None
    reporter = Reporter(plan, config, schedule, progress, checkpoint_dir.parent / TENSORBOARD_DIR)
    try:
        examples_per_second = run_epochs(plan, config, state, Steps(model, optimizer, spec, config, plan), reporter,
                                         mirror, spec)
    finally:  # a failed training leaves no profiler running in this process
        reporter.close(int(state.step.numpy()))
    restored_best = state.restore_best(config.early_stopping.restore_best)
    try:
        served = model if plan.precision == "float32" else float32_twin(model, lambda: build(spec, config, search_path))
        export(served, spec, state.history, output_uri, checkpoint_dir, work_dir, role.is_chief)
    finally:
        writer.cleanup()
    if plan.collective:
        # Finish together: a worker that exits while another still exports leaves that one
        # waiting for the coordination service (seen: 10 s).
        sum_across_workers(plan.strategy, role, (0.0,))
    history, best_epoch = state.history, int(state.best_epoch.numpy())
    final = history[best_epoch - 1] if restored_best else (history[-1] if history else {})
    return ModelArtifact(
        uri=output_uri, saved_model_uri=storage.join(output_uri, SAVED_MODEL_DIR), epochs=len(history),
        steps=int(state.step.numpy()), resumed_from_step=resumed_from,
        final_metrics={k: v for k, v in final.items() if k not in ("epoch", "step", "seconds")},
        strategy=type(plan.strategy).__name__, replicas=plan.strategy.num_replicas_in_sync,
        workers=role.num_workers, best_epoch=best_epoch, stopped_early=bool(state.stopped.numpy()),
        examples_per_second=examples_per_second, traces=dict(plan.traces),
        mixed_precision=plan.precision != "float32", precision=plan.precision, jit_compile=plan.jit,
        checkpoint_files_mirrored=mirror.uploaded if mirror is not None else 0,
    )


def plan_training(examples_uri: str, spec: ModelSpec, params: TrainConfig, role: WorkerRole,
                  cache_dir: Path) -> Plan:
    """Devices, precision, seeds and the strategy; the global batch and the steps per epoch; the
    train shards and the eval dataset."""
    import tensorflow as tf
    import tf_keras as keras

    strategy_name = resolve_strategy(params.strategy)
    configure_devices(strategy_name, params.cpu_replicas)
    precision = precision_policy(params.mixed_precision)
    keras.mixed_precision.set_global_policy(precision)
    apply_graph_options(params.graph_options.tf_options())
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    examples = Examples.open(examples_uri)
    strategy = make_strategy(strategy_name)
    # parameter_server: this chief schedules steps on the workers and evaluates by itself.
    coordinator = (tf.distribute.coordinator.ClusterCoordinator(strategy)
                   if strategy_name == "parameter_server" else None)
    collective = role.num_workers > 1 and coordinator is None
    # The global batch: fixed, or scaled by the replicas (per-replica batch x replicas).
    replicas = strategy.num_replicas_in_sync
    batch = params.batch_size_per_replica * replicas if params.batch_size_per_replica else params.batch_size
    train_count = examples.count("train")
    if train_count // batch < 1:
        raise ValueError(f"the train split has {train_count} examples, fewer than one batch of {batch} (train.batch_size)")
    train_files = examples.files("train", cache_dir)
    compressed = compressed_size(train_files)
    eval_files = examples.files("eval", cache_dir)
    # Each worker evaluates its share of the eval split; the sums are added across workers. Its
    # parsed batches are cached too when the train and eval splits both fit.
    eval_ds = eval_dataset(eval_files, spec, max(batch, 256),
                           num_workers=role.num_workers if collective else 1,
                           worker_index=role.worker_id if collective else 0,
                           cache=should_cache(params.cache, compressed + compressed_size(eval_files)),
                           autotune=params.autotune)
    return Plan(role, strategy, coordinator, precision, batch, train_count // batch, params.epochs, train_files,
                compressed, eval_ds, jit=use_xla(params.jit_compile))


def build_model_and_optimizer(spec: ModelSpec, params: TrainConfig, plan: Plan, search_path: tuple[str, ...]):
    """The model, its learning-rate schedule and its optimizer, under the strategy's scope."""
    with plan.strategy.scope():
        model = build(spec, params, search_path)
        schedule = learning_rate_schedule(params, plan.total_steps, plan.steps_per_epoch, plan.batch)
        optimizer = make_optimizer(params, schedule, plan.loss_scaled)
        optimizer.build(model.trainable_variables)  # slots now, so the step is traced once
    return model, schedule, optimizer


class Throughput:
    """Examples trained and the rate; the steady rate counts from the end of the first call (which
    traces), as the benchmarks do."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.examples = 0
        self._steady_since: float | None = None
        self._steady_examples = 0

    def rate(self) -> float:
        return self.examples / max(time.perf_counter() - self.started, 1e-9)

    def end_calls(self, examples: int) -> None:
        if self._steady_since is None:
            self._steady_since = time.perf_counter()
        else:
            self._steady_examples += examples

    def per_second(self) -> float:
        finished = time.perf_counter()
        if self._steady_examples:
            return self._steady_examples / (finished - self._steady_since)
        return self.examples / (finished - self.started) if self.examples else 0.0


class Reporter:
    """The chief's reports: TensorBoard scalars, :class:`Progress`, and the task log (a line every
    10 s at INFO, a record a second at DEBUG for a terminal's progress bar)."""

    def __init__(self, plan: Plan, params: TrainConfig, schedule, progress: Progress | None, board: Path) -> None:
        import tensorflow as tf

        self.plan, self.params, self.schedule, self.progress = plan, params, schedule, progress
        self.active = plan.role.is_chief
        self.summaries = (tf.summary.create_file_writer(str(board))
                          if params.tensorboard and self.active else None)
        self.clock = Throughput()
        self._last_log = self._last_shown = self.clock.started
        self.profiler = StepProfiler(params.profile_steps, board, self.active)

    def learning_rate(self, step: int) -> float:
        return float(self.schedule(step))

    def on_call(self, epoch: int, first_step: int, step: int, losses: list[float], learning_rate: float) -> None:
        import tensorflow as tf

        if not self.active:
            return
        if self.summaries is not None:
            with self.summaries.as_default(step=step):
                tf.summary.scalar("loss", losses[-1])
                tf.summary.scalar("learning_rate", learning_rate)
        if self.progress is not None:
            self.progress.on_steps(first_step, losses, learning_rate)
        now = time.perf_counter()
        if now - self._last_shown <= BAR_SECONDS:
            return
        level = logging.INFO if now - self._last_log > _PROGRESS_SECONDS else logging.DEBUG
        batch, total, epochs = self.plan.batch, self.plan.total_steps, self.params.epochs
        rate = self.clock.rate()
        eta = (total - step) * batch / max(rate, 1e-9)
        report(log, level, "epoch %d/%d step %d/%d loss %.4f  %.0f examples/s  ETA %.0f s",
               epoch + 1, epochs, step, total, losses[-1], rate, eta,
               task=f"train epoch {epoch + 1}/{epochs}", done=step, total=total,
               unit="steps", rate=rate / batch, eta=eta, detail=f"loss {losses[-1]:.4f}")
        self._last_shown, self._last_log = now, (now if level == logging.INFO else self._last_log)

    def on_epoch(self, epoch: int, step: int, record: dict[str, float]) -> None:
        import tensorflow as tf

        if not self.active:
            return
        if self.summaries is not None:
            with self.summaries.as_default(step=step):
                for key in ("eval_loss", "eval_accuracy"):
                    if key in record:
                        tf.summary.scalar(key, record[key])
        if self.progress is not None:
            self.progress.on_epoch(epoch, record)
        log.info("epoch %d/%d: %s", epoch, self.params.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step")))

    def close(self, steps_done: int) -> None:
        self.profiler.finish(steps_done)  # the training may end (an early stop) before the range does
        if self.summaries is not None:
            self.summaries.flush()


def run_epochs(plan: Plan, params: TrainConfig, state: LoopState, steps: Steps, reporter: Reporter,
               mirror: CheckpointMirror | None, spec: ModelSpec) -> float:
    """Train from the restored step to the last epoch or an early stop, checkpointing as it goes;
    returns the steady examples per second."""
    step, epoch = int(state.step.numpy()), int(state.epoch.numpy())
    # One iterator for the rest of the training (see InputPipeline.epochs).
    iterator = train_iterator(plan, spec, params, epoch, step)
    steps.compile(iterator)

    def settle() -> None:
        """Before writing into the checkpoint folder: the mirror's push in flight has ended."""
        if mirror is not None:
            mirror.wait()

    def save(at: int) -> None:
        settle()
        state.save(at)
        if mirror is not None:
            mirror.push_async()

    while epoch < params.epochs and not bool(state.stopped.numpy()):
        epoch_started = time.perf_counter()
        step, losses = train_epoch(plan, params, state, steps, reporter, iterator, epoch, step, save)
        record = evaluate(plan, steps, spec, epoch, step, losses, epoch_started)
        state.end_epoch(record, params.early_stopping.min_delta, params.early_stopping.patience, before_write=settle)
        epoch += 1
        save(step)
        reporter.on_epoch(epoch, step, record)
    iterator = None  # an early stop leaves epochs unread: stop their prefetching
    if mirror is not None:
        mirror.close()  # the last checkpoint is on shared storage before the model is exported
    return reporter.clock.per_second()


def train_epoch(plan: Plan, params: TrainConfig, state: LoopState, steps: Steps, reporter: Reporter, iterator,
                epoch: int, step: int, save) -> tuple[int, list[float]]:
    """The rest of ``epoch`` from ``step``: calls up to each checkpoint (saved mid-epoch) or the
    epoch's end. Returns the step reached and the epoch's losses."""
    steps_per_epoch, every = plan.steps_per_epoch, params.checkpoint_every_steps
    offset = step - epoch * steps_per_epoch
    epoch_losses: list[float] = []
    while offset < steps_per_epoch:
        # Up to the next checkpoint or the epoch's end: one call, or every call (parameter_server).
        due = min(steps_per_epoch - offset, every - step % every, reporter.profiler.until_boundary(step))
        per_call = params.steps_per_execution
        counts = ([min(per_call, due - i) for i in range(0, due, per_call)] if plan.coordinator is not None
                  else [min(per_call, due)])
        with reporter.profiler.call(step):  # one call (parameter_server: the calls scheduled together)
            called = list(zip(counts, steps.calls(iterator, counts)))
        for count, call_losses in called:
            learning_rate = reporter.learning_rate(step)
            losses = [float(v) for v in call_losses]
            if not all(math.isfinite(v) for v in losses) and not plan.loss_scaled:
                raise FloatingPointError(f"the training loss is {losses[-1]} at step {step + len(losses)}: "
                                         f"lower train.learning_rate or set train.clip_norm")
            epoch_losses += losses
            first_step, step, offset = step + 1, step + count, offset + count
            reporter.clock.examples += count * plan.batch
            state.step.assign(step)
            reporter.on_call(epoch, first_step, step, losses, learning_rate)
        reporter.profiler.after(step)
        reporter.clock.end_calls(sum(counts) * plan.batch)
        if step % every == 0 and offset < steps_per_epoch:
            save(step)
    return step, epoch_losses


def evaluate(plan: Plan, steps: Steps, spec: ModelSpec, epoch: int, step: int, losses: list[float],
             epoch_started: float) -> dict[str, float]:
    """The epoch's record: mean train loss, eval loss (and accuracy for classifiers) over the whole
    eval split (every worker's share added), seconds."""
    eval_loss, eval_correct, eval_count = steps.evaluate()
    if plan.collective:
        eval_loss, eval_correct, eval_count = sum_across_workers(plan.strategy, plan.role,
                                                                 (eval_loss, eval_correct, eval_count))
    record = {
        "epoch": epoch + 1,
        "step": step,
        "loss": sum(losses) / max(len(losses), 1),
        "eval_loss": eval_loss / max(eval_count, 1),
        "seconds": time.perf_counter() - epoch_started,
    }
    if spec.task != "regression":
        record["eval_accuracy"] = eval_correct / max(eval_count, 1)
    return record
