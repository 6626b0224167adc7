"""train_model: a custom ``tf.GradientTape`` loop under a ``tf.distribute`` strategy.

* **Strategies:** ``one_device``, ``mirrored`` (all local GPUs; on a CPU-only machine the CPU
  split into ``train.cpu_replicas`` logical devices), ``multi_worker``
  (``MultiWorkerMirroredStrategy``; ``TF_CONFIG`` from the environment, or N local worker
  processes started by :mod:`tasks.launcher`) and ``parameter_server``
  (``ParameterServerStrategy``: this process is the chief and coordinates with a
  ``ClusterCoordinator``, scheduling the same step function on the workers, whose updates
  reach the variables on the parameter servers asynchronously). ``auto`` mirrors over
  several GPUs, else one device.
* **The step:** ``train.steps_per_execution`` steps per call of one ``tf.function`` traced once
  (fixed input signature); the loss is averaged over the *global* batch, gradients are summed
  across replicas, clipped by their global norm and applied without a second aggregation.
  Warm-up then cosine or exponential decay; Adam or AdamW; mixed precision on GPUs.
* **Fault tolerance:** a checkpoint every ``train.checkpoint_every_steps`` steps and at each
  epoch's end; a retried task restores the latest one and resumes at that step, mid-epoch
  (the epoch's data order depends only on seed and epoch, see :mod:`tasks.inputs`).
* **Early stopping** on the eval loss, exporting the best epoch's weights.
* **Chief-only writes:** under ``multi_worker`` every worker takes part in saving (saving is a
  collective operation) but only the chief writes where others read; the other workers
  write to scratch folders that are removed. Under ``parameter_server`` only the chief runs
  this code at all: it evaluates, checkpoints and exports, reading the variables from the
  parameter servers.

The SavedModel has two signatures:

* ``serving_default``: ``examples``, a 1-D string tensor of serialized ``tf.Example`` (what
  TensorFlow Serving's REST and gRPC clients send);
* ``predict_features``: one rank-1 tensor per raw feature.

Classifiers return ``scores`` and ``classes`` (``[batch, n_classes]``, TensorFlow Serving's
Classify convention), ``predicted_class`` and ``predicted_class_id``; regressors return
``predictions``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.artifacts import SERVING_SIGNATURE
from tasks.config import TrainConfig
from tasks.ingest import read_manifest, split_files
from tasks.inputs import InputPipeline, compressed_size, eval_dataset, should_cache
from tasks.model import ModelSpec, build_model, load_model_fn, parse_spec, prepare, raw_input_signature
from tasks.progress import report

log = logging.getLogger(__name__)

SAVED_MODEL_DIR = "saved_model"
MODEL_SPEC_FILE = "model_spec.json"
HISTORY_FILE = "history.json"
TENSORBOARD_DIR = "tensorboard"
FEATURES_SIGNATURE = "predict_features"
_PROGRESS_SECONDS = 10.0  # a progress line in the task log
_BAR_SECONDS = 1.0  # a progress record for a terminal's bar

@dataclass(frozen=True)
class ModelArtifact:
    uri: str
    saved_model_uri: str
    epochs: int
    steps: int
    resumed_from_step: int
    final_metrics: dict[str, float]
    strategy: str
    replicas: int
    workers: int = 1
    best_epoch: int = 0
    stopped_early: bool = False
    examples_per_second: float = 0.0
    traces: dict[str, int] = field(default_factory=dict)
    mixed_precision: bool = False
    checkpoint_files_mirrored: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a ``TF_CONFIG`` cluster (a lone process is the chief)."""

    task_type: str = "worker"
    index: int = 0
    num_workers: int = 1  # training workers (under parameter_server, the chief coordinates and is not one)

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0 and not self._has_chief)

    _has_chief: bool = False
    parameter_servers: int = 0

    @property
    def node_id(self) -> str:
        return f"{self.task_type}-{self.index}"

    @property
    def worker_id(self) -> int:
        """This worker's place among all workers (a chief counts first)."""
        if self.task_type == "chief":
            return 0
        return self.index + (1 if self._has_chief else 0)

    @classmethod
    def from_tf_config(cls, raw: str | None) -> WorkerRole:
        if not raw:
            return cls()
        config = json.loads(raw)
        cluster, task = config.get("cluster", {}), config.get("task", {})
        ps = len(cluster.get("ps", []))
        workers = len(cluster.get("worker", [])) + (0 if ps else len(cluster.get("chief", [])))
        return cls(task.get("type", "worker"), int(task.get("index", 0)), max(workers, 1), "chief" in cluster, ps)


class DevicesAlreadyInitialized(RuntimeError):
    """The device layout a strategy needs can only be set before TensorFlow runs its first op."""


class Progress:
    """What the training loop reports; the chief's reports reach the task log and MLflow."""

    def on_steps(self, first_step: int, losses: list[float], learning_rate: float) -> None:
        """``losses[i]`` is the loss of step ``first_step + i``."""

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        """After each epoch's evaluation."""


def configure_devices(strategy: str, cpu_replicas: int) -> None:
    """Split the CPU into logical devices for ``mirrored`` on a machine without GPUs.

    Must run before TensorFlow initializes its runtime (the first op); a process that already
    ran TensorFlow code gets a clear error instead of silently training on one replica.
    """
    import tensorflow as tf

    if strategy != "mirrored" or cpu_replicas <= 1 or tf.config.list_physical_devices("GPU"):
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
    if len(tf.config.get_logical_device_configuration(cpu) or []) == cpu_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        raise DevicesAlreadyInitialized(
            f"train.cpu_replicas={cpu_replicas} needs a process in which TensorFlow has not run yet"
        ) from None


def resolve_strategy(name: str) -> str:
    import tensorflow as tf

    if name == "auto":
        return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "one_device"
    return name


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for a config name (``auto`` resolved first)."""
    import tensorflow as tf

    name = resolve_strategy(name)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        jobs = resolver.cluster_spec().as_dict()
        if "ps" not in jobs or resolver.task_type != "chief":
            raise ValueError("train.strategy parameter_server runs in the chief of a cluster with ps tasks "
                             f"(TF_CONFIG jobs: {sorted(jobs) or 'none'}, this task: {resolver.task_type}); "
                             "without TF_CONFIG the pipeline starts such a cluster on this machine")
        return tf.distribute.ParameterServerStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}")


def use_mixed_precision(mode: str) -> bool:
    import tensorflow as tf

    return mode == "on" or (mode == "auto" and bool(tf.config.list_physical_devices("GPU")))


def warmup_schedule(peak: float, warmup_steps: int, decay):
    """Linear warm-up to ``peak``, then ``decay`` (a schedule counted from the end of warm-up)."""
    import tensorflow as tf
    import tf_keras as keras

    class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = peak * (step + 1.0) / float(max(warmup_steps, 1))
            after = tf.cast(decay(tf.maximum(step - float(warmup_steps), 0.0)), tf.float32)
            return tf.where(step < float(warmup_steps), warm, after)

        def get_config(self):
            return {"peak": peak, "warmup_steps": warmup_steps}

    return WarmupSchedule()


def learning_rate_schedule(params: TrainConfig, total_steps: int, steps_per_epoch: int):
    import tf_keras as keras

    warmup = int(params.warmup_fraction * total_steps)
    peak = params.learning_rate
    schedules = keras.optimizers.schedules
    if params.lr_schedule == "cosine":
        decay = schedules.CosineDecay(peak, max(total_steps - warmup, 1), alpha=params.min_learning_rate_ratio)
    elif params.lr_schedule == "exponential":
        decay = schedules.ExponentialDecay(peak, decay_steps=steps_per_epoch, decay_rate=params.decay_rate)
    else:
        def decay(step):
            return peak
    return warmup_schedule(peak, warmup, decay)


def make_optimizer(params: TrainConfig, schedule, mixed: bool):
    import tf_keras as keras

    if params.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=params.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    return keras.mixed_precision.LossScaleOptimizer(optimizer) if mixed else optimizer


def _sum_across_workers(strategy, role: WorkerRole, values: tuple[float, ...]) -> tuple[float, ...]:
    """Add each worker's values (every worker gets the totals) with one collective."""
    import tensorflow as tf

    local = tf.constant(values, tf.float64)
    summed = strategy.run(
        lambda v: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, v), args=(local,))
    # Each local replica contributed the worker's values once: divide by the replicas per worker.
    per_worker = strategy.num_replicas_in_sync // role.num_workers
    totals = strategy.experimental_local_results(summed)[0].numpy() / per_worker
    return tuple(float(v) for v in totals)


def loss_function(spec: ModelSpec):
    """Per-example loss on logits (reduction happens across replicas, not here)."""
    import tf_keras as keras

    none = keras.losses.Reduction.NONE
    if spec.task == "multiclass":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=none)
    if spec.task == "binary":
        bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=none)
        return lambda y, logits: bce(y[:, None], logits)
    mse = keras.losses.MeanSquaredError(reduction=none)
    return lambda y, logits: mse(y[:, None], logits)


def build(spec: ModelSpec, params: TrainConfig, search_path: tuple[str, ...] = ()):
    """The pipeline's model: ``train.model_fn`` when set, else built from schema and statistics."""
    if params.model_fn is None:
        return build_model(spec, params.seed)
    model = load_model_fn(params.model_fn, search_path)(spec, params.seed)
    if not callable(model) or not hasattr(model, "trainable_variables"):
        raise ValueError(f"train.model_fn {params.model_fn!r} must return a Keras model (got {type(model).__name__})")
    return model


class _Writer:
    """Where this worker writes: the real folder for the chief, a scratch folder for the others."""

    def __init__(self, role: WorkerRole, base: Path) -> None:
        self.role = role
        self.base = base
        self._scratch: Path | None = None

    def path(self, target: Path) -> Path:
        if self.role.is_chief:
            return target
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.role.node_id}-", dir=self.base))
        return self._scratch / target.name

    def cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


_MIRRORED = ("latest", "best", HISTORY_FILE)  # the chief's part of the checkpoint folder


class CheckpointMirror:
    """A copy of the checkpoint folder on shared storage (S3), pushed by the chief after each save.

    TensorFlow writes checkpoints through its own file system, which has no ``s3://`` here, so
    they are written locally and copied: a retry on another machine (another Airflow worker, a
    new pod) restores the copy with :func:`restore_checkpoints` and resumes. Each push uploads
    what changed, variable data first, then indexes, then the ``checkpoint`` state file and the
    history, and then removes the checkpoints the manager dropped, so the copy only ever names
    complete checkpoints.

    A push runs on a thread of its own while training goes on; at most one is in flight, and
    :meth:`wait` (which raises what the upload raised) must come before anything writes into
    the mirrored folders again, so a push never reads a file being rewritten.
    """

    def __init__(self, local: Path, uri: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.local, self.uri = local, uri
        self._sent: dict[str, tuple[int, int] | None] = dict.fromkeys(storage.list_files(uri))
        self.uploaded = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-mirror")
        self._pending = None

    def push_async(self) -> None:
        """Start pushing what the folder holds now (after the previous push has ended)."""
        self.wait()
        self._pending = self._pool.submit(self.push)

    def wait(self) -> None:
        """Let the push in flight finish; raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()

    @staticmethod
    def _order(rel: str) -> tuple[int, str]:
        name = rel.rsplit("/", 1)[-1]
        return (0 if ".data-" in name else 1 if name.endswith(".index") else 2), rel

    def push(self) -> int:
        """Upload what changed since the last push and drop what is gone; returns files uploaded."""
        files = {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*")
                 if p.is_file() and p.relative_to(self.local).parts[0] in _MIRRORED}  # not other workers' scratch
        uploaded = 0
        for rel in sorted(files, key=self._order):
            stat = files[rel].stat()
            if self._sent.get(rel) != (stat.st_size, stat.st_mtime_ns):
                storage.upload_file(files[rel], storage.join(self.uri, rel))
                self._sent[rel] = (stat.st_size, stat.st_mtime_ns)
                uploaded += 1
        self.uploaded += uploaded
        for rel in sorted(set(self._sent) - set(files)):
            storage.delete_file(storage.join(self.uri, rel))
            del self._sent[rel]
        return uploaded


def restore_checkpoints(local: Path, uri: str) -> int:
    """Copy the mirrored checkpoints into ``local`` when it has none; returns files copied.

    The copy is downloaded beside ``local`` and renamed into place, so processes restoring
    into one shared folder at once (workers on a shared volume) never see half a copy: the
    first rename wins and the others discard theirs.
    """
    if (local / "latest" / "checkpoint").is_file() or not storage.exists(storage.join(uri, "latest", "checkpoint")):
        return 0
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}-restore-"))
    try:
        files = storage.download_dir(uri, staging)
        if local.exists() and not (local / "latest" / "checkpoint").is_file():
            shutil.rmtree(local, ignore_errors=True)  # a try that ended before its first checkpoint
        try:
            staging.rename(local)
        except OSError:  # another process restored first
            return 0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored %d checkpoint files from %s", len(files), uri)
    return len(files)


def serving_module(model, spec: ModelSpec):
    """The exported ``tf.Module`` around a trained model, and its signatures."""
    import tensorflow as tf

    module = tf.Module()
    module.model = model
    parse = parse_spec(spec, with_label=False)
    vocabulary = tf.constant(list(spec.label_vocabulary) or ["0", "1"])

    def outputs(logits):
        if spec.task == "regression":
            return {"predictions": tf.squeeze(logits, -1)}
        if spec.task == "binary":
            positive = tf.squeeze(tf.sigmoid(logits), -1)
            probabilities = tf.stack([1 - positive, positive], axis=-1)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        class_ids = tf.argmax(probabilities, axis=-1)
        # "scores"/"classes" per class follow TensorFlow Serving's Classify convention.
        return {
            "scores": probabilities,
            "classes": tf.tile(vocabulary[None, :], [tf.shape(probabilities)[0], 1]),
            "predicted_class": tf.gather(vocabulary, class_ids),
            "predicted_class_id": class_ids,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serve_examples(examples):
        return outputs(module.model(prepare(spec, tf.io.parse_example(examples, parse)), training=False))

    @tf.function(input_signature=[raw_input_signature(spec)], autograph=False)
    def serve_features(features):
        return outputs(module.model(prepare(spec, features), training=False))

    module.serve_examples = serve_examples
    module.serve_features = serve_features
    return module, {SERVING_SIGNATURE: serve_examples, FEATURES_SIGNATURE: serve_features}


def train_model(
    examples_uri: str,
    spec: ModelSpec,
    params: TrainConfig,
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
    import tensorflow as tf
    import tf_keras as keras

    role = WorkerRole.from_tf_config(tf_config)
    strategy_name = resolve_strategy(params.strategy)
    configure_devices(strategy_name, params.cpu_replicas)
    mixed = use_mixed_precision(params.mixed_precision)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    keras.utils.set_random_seed(params.seed)
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    manifest = read_manifest(examples_uri)
    local_examples = storage.materialize(examples_uri, cache_dir)
    strategy = make_strategy(strategy_name)
    # parameter_server: this chief schedules steps on the workers and evaluates by itself.
    coordinator = (tf.distribute.coordinator.ClusterCoordinator(strategy)
                   if strategy_name == "parameter_server" else None)
    collective = role.num_workers > 1 and coordinator is None  # every worker runs this code, in step
    replicas = strategy.num_replicas_in_sync
    # The global batch: fixed, or scaled by the replicas (per-replica batch x replicas).
    batch = params.batch_size_per_replica * replicas if params.batch_size_per_replica else params.batch_size
    train_count = int(manifest["splits"]["train"]["count"])
    steps_per_epoch = train_count // batch
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {train_count} examples, fewer than one batch of {batch} (train.batch_size)")
    total_steps = params.epochs * steps_per_epoch
    train_files = split_files(local_examples, manifest, "train")
    compressed = compressed_size(train_files)
    eval_files = split_files(local_examples, manifest, "eval")
    # Each worker evaluates its share of the eval split; the sums are added across workers. Its
    # parsed batches are cached too when the train and eval splits both fit.
    eval_ds = eval_dataset(eval_files, spec, max(batch, 256),
                           num_workers=role.num_workers if collective else 1,
                           worker_index=role.worker_id if collective else 0,
                           cache=should_cache(params.cache, compressed + compressed_size(eval_files)),
                           autotune=params.autotune)
    if checkpoint_uri:
        restore_checkpoints(checkpoint_dir, checkpoint_uri)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    writer = _Writer(role, checkpoint_dir)

    with strategy.scope():
        model = build(spec, params, search_path)
        schedule = learning_rate_schedule(params, total_steps, steps_per_epoch)
        optimizer = make_optimizer(params, schedule, mixed)
        optimizer.build(model.trainable_variables)  # slots now, so the step is traced once
    # Loop state, checkpointed with the weights (plain variables: every worker holds the same values).
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False, name="best_eval_loss")
    best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_without_improvement")
    stopped = tf.Variable(False, trainable=False, name="stopped_early")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, epoch=epoch_var,
                                     best_eval_loss=best_loss, best_epoch=best_epoch, bad_epochs=bad_epochs,
                                     stopped=stopped)
    best_weights = tf.train.Checkpoint(model=model)
    manager = tf.train.CheckpointManager(checkpoint, str(writer.path(checkpoint_dir / "latest")), max_to_keep=2)
    latest = tf.train.latest_checkpoint(str(checkpoint_dir / "latest"))  # the chief's, read by every worker
    history_path = checkpoint_dir / HISTORY_FILE
    history: list[dict[str, float]] = []
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        if history_path.is_file():
            history = json.loads(history_path.read_text())[: int(epoch_var.numpy())]
        log.info("resuming from %s (step %d, epoch %d)", latest, int(step_var.numpy()), int(epoch_var.numpy()))
    resumed_from = int(step_var.numpy())

    per_example_loss = loss_function(spec)
    trainable = model.trainable_variables
    traces = {"train_steps": 0, "eval_step": 0}

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            # Averaged over the global batch: summing the replicas' losses gives the batch mean.
            loss = tf.nn.compute_average_loss(per_example_loss(labels, logits), global_batch_size=batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.get_scaled_loss(loss) if mixed else loss
        gradients = tape.gradient(scaled, trainable)
        if mixed:
            gradients = optimizer.get_unscaled_gradients(gradients)
        gradients = [tf.convert_to_tensor(g) for g in gradients]  # embeddings' IndexedSlices
        # Sum across replicas first, so clipping sees the gradient of the whole global batch.
        # One collective per step: every gradient flattened into one vector (a collective per
        # tensor costs a round trip each between workers).
        flat = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.concat([tf.reshape(g, [-1]) for g in gradients], 0))
        gradients = [tf.reshape(part, g.shape) for part, g in
                     zip(tf.split(flat, [g.shape.num_elements() for g in gradients]), gradients)]
        if params.clip_norm is not None:
            gradients, _ = tf.clip_by_global_norm(gradients, params.clip_norm)
        optimizer.apply_gradients(zip(gradients, trainable), skip_gradients_aggregation=True)
        return loss

    def train_steps(iterator, count):
        """``count`` steps in one call; returns each step's loss."""
        traces["train_steps"] += 1  # runs only while tracing

        def body(i, losses):
            features, labels = next(iterator)
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(features, labels)),
                                   axis=None)
            return i + 1, losses.write(i, loss)

        _, losses = tf.while_loop(lambda i, _: i < count, body,
                                  (tf.constant(0), tf.TensorArray(tf.float32, size=count)))
        return losses.stack()

    def eval_step(features, labels):
        traces["eval_step"] += 1
        logits = tf.cast(model(features, training=False), tf.float32)
        loss = tf.reduce_sum(per_example_loss(labels, logits))
        if spec.task == "multiclass":
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        elif spec.task == "binary":
            predicted = tf.cast(tf.squeeze(logits, -1) > 0, tf.int64)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        else:
            correct = tf.constant(0.0)
        return loss, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def train_pipeline(global_batch: int, num_workers: int, worker_index: int) -> InputPipeline:
        return InputPipeline(
            train_files, spec, global_batch, params.seed, shuffle_buffer=params.shuffle_buffer,
            cache=should_cache(params.cache, compressed), deterministic=params.deterministic,
            autotune=params.autotune, num_workers=num_workers, worker_index=worker_index,
        )

    pipelines: list[InputPipeline] = []  # built once, on the first call, from the strategy's input context

    def worker_batches(context, first: int, skip: int):
        if not pipelines:
            pipelines.append(train_pipeline(batch, context.num_input_pipelines, context.input_pipeline_id))
        return pipelines[0].epochs(first, params.epochs, steps_per_epoch, skip, context.get_per_replica_batch_size(batch))

    def distributed(first: int, skip: int = 0):
        """This worker's batches from epoch ``first`` on, one per local replica and step."""
        return strategy.distribute_datasets_from_function(lambda context: worker_batches(context, first, skip))

    def parameter_server_batches(context, first: int):
        """One worker's endless stream (built on the worker): its shards (or its slice of each
        batch of ``batch`` x workers), an epoch's order per seed and epoch. Workers run at their
        own pace, so the stream runs on past ``train.epochs``; the chief counts the steps."""
        workers = role.num_workers
        index = tf.distribute.coordinator.experimental_get_current_worker_index()
        pipeline = train_pipeline(batch * workers, workers, index)
        return pipeline.epochs(first, first + params.epochs * workers + 1, max(steps_per_epoch // workers, 1), 0,
                               context.get_per_replica_batch_size(batch))

    step = resumed_from
    epoch = int(epoch_var.numpy())
    # One iterator for the rest of the training (see InputPipeline.epochs).
    iterator = None
    if epoch < params.epochs and coordinator is not None:
        iterator = iter(coordinator.create_per_worker_dataset(
            strategy.distribute_datasets_from_function(lambda context: parameter_server_batches(context, epoch))))
    elif epoch < params.epochs:
        iterator = iter(distributed(epoch, step - epoch * steps_per_epoch))
    # autograph=False: AutoGraph would convert tf_keras source while tracing (~7 s of the first step).
    # Scheduled functions take a per-worker iterator, whose spec is the coordinator's to give.
    signature = None if coordinator is not None or iterator is None else [
        iterator._type_spec, tf.TensorSpec([], tf.int32)]  # noqa: SLF001 - the iterator's spec
    compiled_train = tf.function(train_steps, autograph=False, input_signature=signature)

    def calls(counts: list[int]):
        """Each call's losses: one call at a time, or (parameter_server) every call scheduled
        on the workers at once, then collected when all are done."""
        if coordinator is None:
            for count in counts:
                yield compiled_train(iterator, tf.constant(count, tf.int32)).numpy()
            return
        remote = [coordinator.schedule(compiled_train, args=(iterator, tf.constant(c, tf.int32))) for c in counts]
        coordinator.join()
        for value in remote:
            yield value.fetch()
    compiled_eval = tf.function(eval_step, autograph=False, input_signature=list(eval_ds.element_spec))

    summaries = None
    if params.tensorboard and role.is_chief:
        summaries = tf.summary.create_file_writer(str(checkpoint_dir.parent / TENSORBOARD_DIR))

    mirror = CheckpointMirror(checkpoint_dir, checkpoint_uri) if checkpoint_uri and role.is_chief else None

    def settle() -> None:
        """Before writing into the checkpoint folder: the mirror's push in flight has ended."""
        if mirror is not None:
            mirror.wait()

    def save(step: int) -> None:
        settle()
        manager.save(checkpoint_number=step)
        if role.is_chief:
            history_path.write_text(json.dumps(history))
        if mirror is not None:
            mirror.push_async()

    started, trained_examples = time.perf_counter(), 0
    # Throughput counts from the end of the first call (which traces): steady state, as in benchmarks.
    steady_since, steady_examples = None, 0
    last_log = last_shown = started
    while epoch < params.epochs and not bool(stopped.numpy()):
        epoch_started = time.perf_counter()
        offset = step - epoch * steps_per_epoch
        losses_this_epoch: list[float] = []
        while offset < steps_per_epoch:
            # Up to the next checkpoint or the epoch's end: one call, or every call (parameter_server).
            due = min(steps_per_epoch - offset, params.checkpoint_every_steps - step % params.checkpoint_every_steps)
            per_call = params.steps_per_execution
            counts = ([min(per_call, due - i) for i in range(0, due, per_call)] if coordinator is not None
                      else [min(per_call, due)])
            for count, call_losses in zip(counts, calls(counts)):
                learning_rate = float(schedule(step))
                losses = [float(v) for v in call_losses]
                if not all(math.isfinite(v) for v in losses) and not mixed:
                    raise FloatingPointError(f"the training loss is {losses[-1]} at step {step + len(losses)}: "
                                             f"lower train.learning_rate or set train.clip_norm")
                losses_this_epoch += losses
                first_step, step, offset = step + 1, step + count, offset + count
                trained_examples += count * batch
                step_var.assign(step)
                if role.is_chief:
                    if summaries is not None:
                        with summaries.as_default(step=step):
                            tf.summary.scalar("loss", losses[-1])
                            tf.summary.scalar("learning_rate", learning_rate)
                    if progress is not None:
                        progress.on_steps(first_step, losses, learning_rate)
                    now = time.perf_counter()
                    if now - last_shown > _BAR_SECONDS:  # INFO for the task log, DEBUG for a terminal's bar
                        level = logging.INFO if now - last_log > _PROGRESS_SECONDS else logging.DEBUG
                        rate = trained_examples / (now - started)
                        eta = (total_steps - step) * batch / max(rate, 1e-9)
                        report(log, level, "epoch %d/%d step %d/%d loss %.4f  %.0f examples/s  ETA %.0f s",
                               epoch + 1, params.epochs, step, total_steps, losses[-1], rate, eta,
                               task=f"train epoch {epoch + 1}/{params.epochs}", done=step, total=total_steps,
                               unit="steps", rate=rate / batch, eta=eta, detail=f"loss {losses[-1]:.4f}")
                        last_shown, last_log = now, (now if level == logging.INFO else last_log)
            if steady_since is None:
                steady_since = time.perf_counter()
            else:
                steady_examples += sum(counts) * batch
            if step % params.checkpoint_every_steps == 0 and offset < steps_per_epoch:
                save(step)
        eval_loss = eval_correct = eval_count = 0.0
        for features, labels in eval_ds:
            loss, correct, count_ = (float(v) for v in compiled_eval(features, labels))
            eval_loss, eval_correct, eval_count = eval_loss + loss, eval_correct + correct, eval_count + count_
        if collective:
            eval_loss, eval_correct, eval_count = _sum_across_workers(strategy, role, (eval_loss, eval_correct, eval_count))
        record = {
            "epoch": epoch + 1,
            "step": step,
            "loss": sum(losses_this_epoch) / max(len(losses_this_epoch), 1),
            "eval_loss": eval_loss / max(eval_count, 1),
            "seconds": time.perf_counter() - epoch_started,
        }
        if spec.task != "regression":
            record["eval_accuracy"] = eval_correct / max(eval_count, 1)
        history.append(record)
        epoch += 1
        epoch_var.assign(epoch)
        if record["eval_loss"] < float(best_loss.numpy()) - params.early_stopping.min_delta:
            best_loss.assign(record["eval_loss"])
            best_epoch.assign(epoch)
            bad_epochs.assign(0)
            settle()
            best_weights.write(str(writer.path(checkpoint_dir / "best") / "weights"))
        else:
            bad_epochs.assign_add(1)
            patience = params.early_stopping.patience
            if patience is not None and int(bad_epochs.numpy()) >= patience:
                stopped.assign(True)
                log.info("early stopping after epoch %d: no eval loss improvement for %d epochs (best: epoch %d)",
                         epoch, patience, int(best_epoch.numpy()))
        save(step)
        if role.is_chief:
            if summaries is not None:
                with summaries.as_default(step=step):
                    for key in ("eval_loss", "eval_accuracy"):
                        if key in record:
                            tf.summary.scalar(key, record[key])
            if progress is not None:
                progress.on_epoch(epoch, record)
            log.info("epoch %d/%d: %s", epoch, params.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step")))
    finished = time.perf_counter()
    iterator = None  # an early stop leaves epochs unread: stop their prefetching
    if mirror is not None:
        mirror.close()  # the last checkpoint is on shared storage before the model is exported
    if steady_examples:
        examples_per_second = steady_examples / (finished - steady_since)
    else:
        examples_per_second = trained_examples / (finished - started) if trained_examples else 0.0
    if summaries is not None:
        summaries.flush()

    restored_best = False
    if params.early_stopping.restore_best and int(best_epoch.numpy()) and int(best_epoch.numpy()) != epoch:
        best_weights.read(str(checkpoint_dir / "best" / "weights")).assert_existing_objects_matched()
        restored_best = True

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="train-"))
    try:
        module, signatures = serving_module(model, spec)
        keras.mixed_precision.set_global_policy("float32")
        tf.saved_model.save(module, str(scratch / SAVED_MODEL_DIR), signatures=signatures)
        if role.is_chief:
            (scratch / MODEL_SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
            (scratch / HISTORY_FILE).write_text(json.dumps(history, indent=2))
            board = checkpoint_dir.parent / TENSORBOARD_DIR
            if board.is_dir():
                shutil.copytree(board, scratch / TENSORBOARD_DIR)
            storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        writer.cleanup()
    if collective:
        # Finish together: a worker that exits while another still exports leaves that one
        # waiting for the coordination service (seen: 10 s).
        _sum_across_workers(strategy, role, (0.0,))
    if restored_best:
        log.info("exported the weights of epoch %d (lowest eval loss)", int(best_epoch.numpy()))
    final = history[int(best_epoch.numpy()) - 1] if restored_best else (history[-1] if history else {})
    return ModelArtifact(
        uri=output_uri,
        saved_model_uri=storage.join(output_uri, SAVED_MODEL_DIR),
        epochs=len(history),
        steps=step,
        resumed_from_step=resumed_from,
        final_metrics={k: v for k, v in final.items() if k not in ("epoch", "step", "seconds")},
        strategy=type(strategy).__name__,
        replicas=replicas,
        workers=role.num_workers,
        best_epoch=int(best_epoch.numpy()),
        stopped_early=bool(stopped.numpy()),
        examples_per_second=examples_per_second,
        traces=dict(traces),
        mixed_precision=mixed,
        checkpoint_files_mirrored=mirror.uploaded if mirror is not None else 0,
    )


def read_model_spec(model_uri: str) -> ModelSpec:
    storage.require_complete(model_uri)
    return ModelSpec.from_dict(json.loads(storage.read_bytes(storage.join(model_uri, MODEL_SPEC_FILE))))


def read_history(model_uri: str) -> list[dict[str, float]]:
    return json.loads(storage.read_bytes(storage.join(model_uri, HISTORY_FILE)))
