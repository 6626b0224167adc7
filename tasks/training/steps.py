"""The step functions the loop calls, and the batches they read.

* **The train step:** ``train.steps_per_execution`` steps per call of one ``tf.function`` traced
  once (fixed input signature); the loss is averaged over the *global* batch, gradients are
  summed across replicas in one collective, clipped by their global norm and applied without a
  second aggregation. Under ``parameter_server`` the calls are scheduled on the workers.
* **The eval step:** summed loss, correct predictions and example count of one batch; the loop
  adds them up (and, with several workers, adds them across workers).
* **The batches:** one iterator for the rest of the training, from the epoch and step it
  resumes at (:class:`tasks.training.inputs.InputPipeline`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tasks.config import TrainConfig
from tasks.training.distribution import WorkerRole
from tasks.training.inputs import InputPipeline, should_cache
from tasks.training.model import ModelSpec, split_at_lookups
from tasks.training.optimization import loss_function


@dataclass
class Plan:
    """What a training run is set up with before the model exists: where it runs and on what."""

    role: WorkerRole
    strategy: Any  # a tf.distribute strategy
    coordinator: Any  # a ClusterCoordinator under parameter_server, else None
    precision: str  # the Keras dtype policy: float32, mixed_float16 or mixed_bfloat16
    batch: int  # the global batch
    steps_per_epoch: int
    epochs: int
    train_files: list[str]
    compressed: int  # bytes of the train shards (whether their parsed batches are cached)
    eval_ds: Any
    traces: dict[str, int] = field(default_factory=lambda: {"train_steps": 0, "eval_step": 0})
    jit: bool = False  # the model's part of each step compiled with XLA (train.jit_compile)

    @property
    def loss_scaled(self) -> bool:
        """float16's narrow range needs the loss scaled (bfloat16 has float32's)."""
        return self.precision == "mixed_float16"

    @property
    def collective(self) -> bool:
        """Every worker runs the loop, in step (multi_worker with several workers)."""
        return self.role.num_workers > 1 and self.coordinator is None

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class Steps:
    """The compiled train and eval steps of one model and optimizer."""

    def __init__(self, model, optimizer, spec: ModelSpec, params: TrainConfig, plan: Plan) -> None:
        self.model, self.optimizer, self.spec, self.params, self.plan = model, optimizer, spec, params, plan
        self.per_example_loss = loss_function(spec)
        self.trainable = model.trainable_variables
        self._train = self._eval = None
        # train.jit_compile: the lookups run as they are, the rest (every weight) compiled with XLA.
        self.encoder, self.core = split_at_lookups(model) if plan.jit else (None, model)
        self._gradients, self._logits = self.gradients, self.logits

    def encode(self, features):
        return features if self.encoder is None else self.encoder(features, training=False)

    def logits(self, inputs, training: bool):
        import tensorflow as tf

        return tf.cast(self.core(inputs, training=training), tf.float32)

    def gradients(self, inputs, labels):
        """The replica's loss and its gradients (not yet summed across replicas)."""
        import tensorflow as tf

        core, optimizer, mixed = self.core, self.optimizer, self.plan.loss_scaled
        with tf.GradientTape() as tape:
            logits = self.logits(inputs, True)
            # Averaged over the global batch: summing the replicas' losses gives the batch mean.
            loss = tf.nn.compute_average_loss(self.per_example_loss(labels, logits), global_batch_size=self.plan.batch)
            if core.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(core.losses))
            scaled = optimizer.get_scaled_loss(loss) if mixed else loss
        gradients = tape.gradient(scaled, self.trainable)
        if mixed:
            gradients = optimizer.get_unscaled_gradients(gradients)
        return loss, [tf.convert_to_tensor(g) for g in gradients]  # embeddings' IndexedSlices made dense

    def replica_step(self, features, labels):
        import tensorflow as tf

        loss, gradients = self._gradients(self.encode(features), labels)
        # Sum across replicas first, so clipping sees the gradient of the whole global batch.
        # One collective per step: every gradient flattened into one vector (a collective per
        # tensor costs a round trip each between workers).
        flat = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.concat([tf.reshape(g, [-1]) for g in gradients], 0))
        gradients = [tf.reshape(part, g.shape) for part, g in
                     zip(tf.split(flat, [g.shape.num_elements() for g in gradients]), gradients)]
        if self.params.clip_norm is not None:
            gradients, _ = tf.clip_by_global_norm(gradients, self.params.clip_norm)
        self.optimizer.apply_gradients(zip(gradients, self.trainable), skip_gradients_aggregation=True)
        return loss

    def train_steps(self, iterator, count):
        """``count`` steps in one call; returns each step's loss."""
        import tensorflow as tf

        self.plan.traces["train_steps"] += 1  # runs only while tracing
        strategy = self.plan.strategy

        def body(i, losses):
            features, labels = next(iterator)
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(self.replica_step, args=(features, labels)),
                                   axis=None)
            return i + 1, losses.write(i, loss)

        _, losses = tf.while_loop(lambda i, _: i < count, body,
                                  (tf.constant(0), tf.TensorArray(tf.float32, size=count)))
        return losses.stack()

    def eval_step(self, features, labels):
        import tensorflow as tf

        self.plan.traces["eval_step"] += 1
        logits = self._logits(self.encode(features), False)
        loss = tf.reduce_sum(self.per_example_loss(labels, logits))
        if self.spec.task == "multiclass":
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        elif self.spec.task == "binary":
            predicted = tf.cast(tf.squeeze(logits, -1) > 0, tf.int64)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        else:
            correct = tf.constant(0.0)
        return loss, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def compile(self, iterator) -> None:
        """Trace-once ``tf.function``s. autograph=False: AutoGraph would convert tf_keras source
        while tracing (~7 s of the first step). Scheduled functions take a per-worker iterator,
        whose spec is the coordinator's to give."""
        import tensorflow as tf

        signature = None if self.plan.coordinator is not None or iterator is None else [
            iterator._type_spec, tf.TensorSpec([], tf.int32)]  # noqa: SLF001 - the iterator's spec
        if self.plan.jit:  # nested in the step functions: XLA compiles the model's part only
            self._gradients = tf.function(self.gradients, autograph=False, jit_compile=True)
            self._logits = tf.function(self.logits, autograph=False, jit_compile=True)
        self._train = tf.function(self.train_steps, autograph=False, input_signature=signature)
        self._eval = tf.function(self.eval_step, autograph=False, input_signature=list(self.plan.eval_ds.element_spec))

    def calls(self, iterator, counts: list[int]) -> Iterator[Any]:
        """Each call's losses: one call at a time, or (parameter_server) every call scheduled on
        the workers at once, then collected when all are done."""
        import tensorflow as tf

        coordinator = self.plan.coordinator
        if coordinator is None:
            for count in counts:
                yield self._train(iterator, tf.constant(count, tf.int32)).numpy()
            return
        remote = [coordinator.schedule(self._train, args=(iterator, tf.constant(c, tf.int32))) for c in counts]
        coordinator.join()
        for value in remote:
            yield value.fetch()

    def evaluate(self) -> tuple[float, float, float]:
        """This worker's summed eval loss, correct predictions and examples."""
        loss = correct = count = 0.0
        for features, labels in self.plan.eval_ds:
            batch_loss, batch_correct, batch_count = (float(v) for v in self._eval(features, labels))
            loss, correct, count = loss + batch_loss, correct + batch_correct, count + batch_count
        return loss, correct, count


def train_iterator(plan: Plan, spec: ModelSpec, params: TrainConfig, epoch: int, step: int):
    """One iterator for the rest of the training, from ``epoch`` and ``step`` (see
    :meth:`InputPipeline.epochs`); None when the training is over."""
    import tensorflow as tf

    if epoch >= params.epochs:
        return None
    strategy, batch, steps_per_epoch = plan.strategy, plan.batch, plan.steps_per_epoch

    def pipeline(global_batch: int, num_workers: int, worker_index: int) -> InputPipeline:
        return InputPipeline(
            plan.train_files, spec, global_batch, params.seed, shuffle_buffer=params.shuffle_buffer,
            cache=should_cache(params.cache, plan.compressed), deterministic=params.deterministic,
            autotune=params.autotune, num_workers=num_workers, worker_index=worker_index,
        )

    if plan.coordinator is not None:
        def parameter_server_batches(context):
            """One worker's endless stream (built on the worker): its shards (or its slice of each
            batch of ``batch`` x workers), an epoch's order per seed and epoch. Workers run at their
            own pace, so the stream runs on past ``train.epochs``; the chief counts the steps."""
            workers = plan.role.num_workers
            index = tf.distribute.coordinator.experimental_get_current_worker_index()
            return pipeline(batch * workers, workers, index).epochs(
                epoch, epoch + params.epochs * workers + 1, max(steps_per_epoch // workers, 1), 0,
                context.get_per_replica_batch_size(batch))

        return iter(plan.coordinator.create_per_worker_dataset(
            strategy.distribute_datasets_from_function(parameter_server_batches)))

    built: list[InputPipeline] = []  # built once, on the first call, from the strategy's input context

    def worker_batches(context):
        """This worker's batches from ``epoch`` on, one per local replica and step."""
        if not built:
            built.append(pipeline(batch, context.num_input_pipelines, context.input_pipeline_id))
        return built[0].epochs(epoch, params.epochs, steps_per_epoch, step - epoch * steps_per_epoch,
                               context.get_per_replica_batch_size(batch))

    return iter(strategy.distribute_datasets_from_function(worker_batches))
