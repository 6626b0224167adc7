"""train_model: a custom ``tf.GradientTape`` loop under a ``tf.distribute`` strategy.

Reads the TFRecord shards with ``tf.data`` (batch before parse), checkpoints every epoch
so a retried task resumes where the last try stopped, and exports a SavedModel with two
signatures:

* ``serving_default``: ``examples``, a 1-D string tensor of serialized ``tf.Example`` (what
  TensorFlow Serving's REST and gRPC clients send);
* ``predict_features``: one rank-1 tensor per raw feature.

Classifiers return ``scores`` and ``classes`` (``[batch, n_classes]``, TensorFlow Serving's
Classify convention), ``predicted_class`` and ``predicted_class_id``; regressors return
``predictions``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import storage
from tasks.config import TrainConfig
from tasks.ingest import read_manifest, split_files
from tasks.model import ModelSpec, build_model, parse_spec, prepare, raw_input_signature

SAVED_MODEL_DIR = "saved_model"
MODEL_SPEC_FILE = "model_spec.json"
HISTORY_FILE = "history.json"
SERVING_SIGNATURE = "serving_default"
FEATURES_SIGNATURE = "predict_features"


@dataclass(frozen=True)
class ModelArtifact:
    uri: str
    saved_model_uri: str
    epochs: int
    resumed_from_epoch: int
    final_metrics: dict[str, float]
    strategy: str
    replicas: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_strategy(name: str):
    """``auto`` picks: several GPUs mirrored, one GPU or the CPU as one device."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def label_transform(spec: ModelSpec) -> Callable[[Any], Any]:
    """Raw label tensor ``[batch, 1]`` to the training target."""
    import tensorflow as tf

    if spec.task == "regression":
        return lambda y: tf.cast(tf.squeeze(y, -1), tf.float32)
    if spec.label_vocabulary:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(spec.label_vocabulary)), tf.range(len(spec.label_vocabulary), dtype=tf.int64)
            ),
            default_value=-1,
        )
        return lambda y: table.lookup(tf.squeeze(y, -1))
    return lambda y: tf.cast(tf.squeeze(y, -1), tf.int64)


def make_dataset(files: list[str], spec: ModelSpec, batch_size: int, *, shuffle: bool, seed: int):
    """``(features, label)`` batches: read, shuffle, batch, then parse a whole batch at once."""
    import tensorflow as tf

    parse = parse_spec(spec, with_label=True)
    to_target = label_transform(spec)

    def parse_batch(serialized):
        parsed = tf.io.parse_example(serialized, parse)
        return prepare(spec, parsed), to_target(parsed[spec.label])

    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    return (
        dataset.batch(batch_size)
        .map(parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


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
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> ModelArtifact:
    """Train, checkpointing each epoch into ``checkpoint_dir``, and publish the SavedModel.

    ``checkpoint_dir`` must be the same across tries of one run: a retry restores the last
    checkpoint and continues from the epoch after it.
    """
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(params.seed)
    manifest = read_manifest(examples_uri)
    local_examples = storage.materialize(examples_uri, cache_dir)
    strategy = make_strategy(params.strategy)
    replicas = strategy.num_replicas_in_sync

    with strategy.scope():
        model = build_model(spec, params.seed)
        optimizer = keras.optimizers.Adam(params.learning_rate)
        optimizer.build(model.trainable_variables)  # slots now, so the step is traced once
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=2)
    history: list[dict[str, float]] = []
    history_path = checkpoint_dir / HISTORY_FILE
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint)
        if history_path.is_file():
            history = json.loads(history_path.read_text())[: int(epoch_var.numpy())]
    resumed_from = int(epoch_var.numpy())

    train_ds = strategy.experimental_distribute_dataset(
        make_dataset(split_files(local_examples, manifest, "train"), spec, params.batch_size,
                     shuffle=True, seed=params.seed)
    )
    eval_ds = make_dataset(split_files(local_examples, manifest, "eval"), spec, params.batch_size,
                           shuffle=False, seed=params.seed)
    per_example_loss = loss_function(spec)

    def replica_step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            loss = tf.nn.compute_average_loss(per_example_loss(labels, logits))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    # autograph=False: AutoGraph would convert tf_keras source while tracing (~7 s of the first step).
    @tf.function(input_signature=[train_ds.element_spec], autograph=False)
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    @tf.function(input_signature=[eval_ds.element_spec], autograph=False)
    def eval_step(batch):
        features, labels = batch
        logits = model(features, training=False)
        loss = tf.reduce_sum(per_example_loss(labels, logits))
        if spec.task == "multiclass":
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        elif spec.task == "binary":
            predicted = tf.cast(tf.squeeze(logits, -1) > 0, tf.int64)
            correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32))
        else:
            correct = tf.constant(0.0)
        return loss, correct, tf.cast(tf.shape(labels)[0], tf.float32)

    for epoch in range(resumed_from, params.epochs):
        started = time.perf_counter()
        total, batches = 0.0, 0
        for batch in train_ds:
            total += float(train_step(batch))
            batches += 1
        eval_loss = eval_correct = eval_count = 0.0
        for batch in eval_ds:
            loss, correct, count = (float(v) for v in eval_step(batch))
            eval_loss, eval_correct, eval_count = eval_loss + loss, eval_correct + correct, eval_count + count
        record = {
            "epoch": epoch + 1,
            "loss": total / max(batches, 1),
            "eval_loss": eval_loss / max(eval_count, 1),
            "seconds": time.perf_counter() - started,
        }
        if spec.task != "regression":
            record["eval_accuracy"] = eval_correct / max(eval_count, 1)
        history.append(record)
        epoch_var.assign(epoch + 1)
        manager.save(checkpoint_number=epoch + 1)
        history_path.write_text(json.dumps(history))
        if on_epoch is not None:
            on_epoch(epoch + 1, record)

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="train-"))
    try:
        module, signatures = serving_module(model, spec)
        tf.saved_model.save(module, str(scratch / SAVED_MODEL_DIR), signatures=signatures)
        (scratch / MODEL_SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
        (scratch / HISTORY_FILE).write_text(json.dumps(history, indent=2))
        storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    final = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("epoch", "seconds")}
    return ModelArtifact(
        uri=output_uri,
        saved_model_uri=storage.join(output_uri, SAVED_MODEL_DIR),
        epochs=len(history),
        resumed_from_epoch=resumed_from,
        final_metrics=final,
        strategy=type(strategy).__name__,
        replicas=replicas,
    )


def read_model_spec(model_uri: str) -> ModelSpec:
    storage.require_complete(model_uri)
    return ModelSpec.from_dict(json.loads(storage.read_bytes(storage.join(model_uri, MODEL_SPEC_FILE))))


def read_history(model_uri: str) -> list[dict[str, float]]:
    return json.loads(storage.read_bytes(storage.join(model_uri, HISTORY_FILE)))
