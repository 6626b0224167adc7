"""Fine-tuning a trained model with its dense layers wrapped: what the optimize step's pruned
variant (tfmot's magnitude pruning) and ``qat_int8`` (:mod:`tasks.quantization`) share.

The model is rebuilt from its spec and given the SavedModel's weights
(:func:`restored_model`), its dense layers are wrapped (:func:`clone_dense_layers`), and it is
fine-tuned on the train split by a step function traced once (:func:`fine_tune`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.training.model import ModelSpec


def restored_model(saved_model_dir: Path, spec: ModelSpec, build_model: Callable[[ModelSpec], Any]):
    """The Keras model of ``spec`` holding the SavedModel's weights. The export keeps the
    variables' object graph (``model/...``), so a checkpoint read into a model built from the
    spec matches every variable."""
    import tensorflow as tf

    model = build_model(spec)
    tf.train.Checkpoint(model=model).read(str(saved_model_dir / "variables" / "variables")) \
        .expect_partial().assert_existing_objects_matched()
    return model


def clone_dense_layers(model, wrap: Callable[[Any], Any], purpose: str):
    """``model`` cloned with each dense layer replaced by ``wrap(layer)`` (the same weights); the
    other layers (lookups, normalization, embeddings, concatenation) are kept as they are.

    Raises:
        ValueError: The model has no dense layer, or is not a functional/sequential Keras model
            (``purpose`` names what needs it).
    """
    import tf_keras as keras
    # The switch tf_keras itself reads to decide whether a layer's call is converted.
    from tensorflow.python.autograph.core import ag_ctx

    wrapped = []

    def clone(layer):
        if isinstance(layer, keras.layers.Dense):
            wrapped.append(layer.name)
            return wrap(layer)
        return layer

    try:
        # Built without AutoGraph, as Keras does inside a tf.function(autograph=False): converting
        # the pruning wrappers' Python while the functional graph is rebuilt took 2 s of the 2.2.
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
            cloned = keras.models.clone_model(model, clone_function=clone)
    except ValueError as error:
        raise ValueError(f"{purpose} needs a functional or sequential Keras model: {error}") from None
    if not wrapped:
        raise ValueError(f"the model has no dense layer for {purpose}")
    return cloned


def prune_model(saved_model_dir: Path, spec: ModelSpec, train_files: list[str], train_count: int, out_dir: Path,
                target_sparsity: float, epochs: int, batch_size: int, learning_rate: float,
                build_model: Callable[[ModelSpec], Any]) -> dict[str, Any]:
    """Fine-tune the dense layers under a polynomial sparsity schedule, strip the pruning
    wrappers, export with the same signatures. Returns the sparsity reached per pruned kernel.

    Raises:
        ValueError: The model has no dense layer, or is not a functional/sequential Keras model.
    """
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import collect_prunable_layers

    from tasks.training.export import save_serving_model, serving_module

    model = restored_model(saved_model_dir, spec, build_model)
    steps_per_epoch = max(1, train_count // batch_size)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=target_sparsity, begin_step=0,
        end_step=max(1, int(steps_per_epoch * epochs * 0.8)), frequency=max(1, steps_per_epoch // 4))
    pruned = clone_dense_layers(
        model, lambda layer: tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule), "pruning")
    # What fit with tfmot's UpdatePruningStep does: the pruning step starts at 0, each training
    # call advances it and updates the masks on the schedule, each epoch ends by applying them.
    layers = collect_prunable_layers(pruned)
    for layer in layers:
        layer.pruning_step.assign(0)

    def apply_masks() -> None:
        for layer in layers:
            layer.pruning_obj.weight_mask_op()

    fine_tune(pruned, spec, train_files, train_count, epochs, batch_size, learning_rate, end_of_epoch=apply_masks)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    module, signatures = serving_module(stripped, spec)
    save_serving_model(module, out_dir, signatures)
    return {layer.name: float(np.mean(layer.kernel.numpy() == 0))
            for layer in stripped.layers if isinstance(layer, keras.layers.Dense)}


def fine_tune(model, spec: ModelSpec, train_files: list[str], train_count: int, epochs: int, batch_size: int,
              learning_rate: float, end_of_epoch: Callable[[], None] | None = None) -> None:
    """Fine-tune a restored (pruning- or quantization-wrapped) model on the train split with
    Adam, ``epochs`` passes of whole batches, as a step function traced once without AutoGraph.
    Keras's ``fit`` converts its own and the wrappers' Python through AutoGraph first: 10x the
    time of the fine-tuning itself on a small table (docs/benchmarks.md). ``end_of_epoch`` runs
    after each pass (pruning applies its masks there)."""
    import tensorflow as tf
    import tf_keras as keras

    from tasks.training.inputs import batch_parser
    from tasks.training.optimization import loss_function

    steps_per_epoch = max(1, train_count // batch_size)
    data = tf.data.TFRecordDataset(train_files, "GZIP").shuffle(10_000, seed=0).repeat() \
        .batch(batch_size, drop_remainder=True).map(batch_parser(spec), num_parallel_calls=tf.data.AUTOTUNE) \
        .prefetch(tf.data.AUTOTUNE)
    per_example, optimizer = loss_function(spec), keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)  # slots now: a first call that made them would trace twice

    @tf.function(autograph=False)
    def step(features, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example(target, model(features, training=True)))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    batches = iter(data)
    for _epoch in range(epochs):
        for _ in range(steps_per_epoch):
            step(*next(batches))
        if end_of_epoch is not None:
            end_of_epoch()
