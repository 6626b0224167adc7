"""What the loop optimizes: the per-example loss, the learning-rate schedule (linear warm-up, then
cosine, exponential or constant) and the optimizer (Adam or AdamW, loss-scaled under mixed
precision)."""

from __future__ import annotations

from tasks.config import TrainConfig
from tasks.training.model import ModelSpec


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


def peak_learning_rate(params: TrainConfig, global_batch: int) -> float:
    """``train.learning_rate``, scaled by ``train.lr_scaling`` when the global batch grows with the
    replicas (``batch_size_per_replica``): linear (Goyal et al., 2017) or square root."""
    if params.batch_size_per_replica is None or params.lr_scaling == "none":
        return params.learning_rate
    growth = global_batch / params.batch_size_per_replica
    return params.learning_rate * (growth if params.lr_scaling == "linear" else growth ** 0.5)


def learning_rate_schedule(params: TrainConfig, total_steps: int, steps_per_epoch: int, global_batch: int = 0):
    import tf_keras as keras

    warmup = int(params.warmup_fraction * total_steps)
    peak = peak_learning_rate(params, global_batch or params.batch_size)
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
