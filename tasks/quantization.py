"""Quantization-aware training for the optimize step's ``qat_int8`` variant.

Post-training full-integer quantization (``tflite_int8``) rounds weights and activations to
int8 that the model never saw rounded during training. Quantization-aware training
(``tensorflow-model-optimization``) fine-tunes the trained model with that rounding in its
forward pass: fake-quant ops on each dense layer's kernel and output, gradients passed straight
through, the activation ranges learned as moving averages. The weights settle where int8 costs
least, and the TFLite converter takes the learned ranges for the dense layers.

Only the dense layers are annotated: the string lookups, normalization and embeddings run
before them in float (a lookup has no integer form); tfmot itself quantizes a concatenation that
feeds a quantized dense layer. The fine-tuned model is exported as a SavedModel with the
original's signatures, which the optimize step converts to a full-integer ``.tflite``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.training.model import ModelSpec

PURPOSE = "quantization-aware training"


def quantize_dense_layers(model):
    """``model`` with tfmot's default 8-bit fake quantization on its dense layers, the weights kept.

    Raises:
        ValueError: The model has no dense layer, is not a functional/sequential Keras model, or
            holds a layer tfmot cannot quantize.
    """
    import tensorflow_model_optimization as tfmot
    from tensorflow.python.autograph.core import ag_ctx

    from tasks.finetuning import clone_dense_layers

    keras_quantization = tfmot.quantization.keras
    annotated = clone_dense_layers(model, keras_quantization.quantize_annotate_layer, PURPOSE)
    try:
        # Without AutoGraph, as the pruning clone: quantize_apply took 4.3 s with AutoGraph
        # converting the wrappers' Python, 0.6 s without, on the penguins test model.
        with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED), keras_quantization.quantize_scope():
            return keras_quantization.quantize_apply(annotated)
    except (ValueError, RuntimeError, TypeError) as error:
        raise ValueError(f"{PURPOSE}: tfmot cannot quantize this model: {error}") from None


def train_quantization_aware(saved_model_dir: Path, spec: ModelSpec, train_files: list[str], train_count: int,
                             out_dir: Path, epochs: int, batch_size: int, learning_rate: float,
                             build_model: Callable[[ModelSpec], Any]) -> None:
    """Restore the trained model, fine-tune it with fake quantization on its dense layers for
    ``epochs`` passes over the train split, and export it to ``out_dir`` as a SavedModel with the
    original's signatures (its graph holds the fake-quant ops the converter reads).

    Raises:
        ValueError: The model cannot be annotated for quantization (see :func:`quantize_dense_layers`).
    """
    from tasks.finetuning import fine_tune, restored_model
    from tasks.training.export import save_serving_model, serving_module

    quantized = quantize_dense_layers(restored_model(saved_model_dir, spec, build_model))
    fine_tune(quantized, spec, train_files, train_count, epochs, batch_size, learning_rate)
    module, signatures = serving_module(quantized, spec)
    save_serving_model(module, out_dir, signatures)
