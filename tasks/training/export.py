"""The trained model as it leaves training: a SavedModel with two signatures, the model spec, the
history and the TensorBoard logs, published together at the model's URI.

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
from functools import lru_cache
from pathlib import Path

from tasks import storage
from tasks.artifacts import (FEATURES_SIGNATURE, HISTORY_FILE, MODEL_SPEC_FILE, SAVED_MODEL_DIR, SAVED_MODEL_PB,
                             SERVING_SIGNATURE, TENSORBOARD_DIR)
from tasks.training.model import ModelSpec, parse_spec, prepare, raw_input_signature


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


def float32_twin(model, rebuild):
    """The trained model with float32 compute, for export: a model trained under a mixed policy
    computes in float16 or bfloat16 in every layer, which TensorFlow Serving's CPU kernels and
    the TFLite converter (no bfloat16) do not all take. ``rebuild()`` builds the same
    architecture; the weights (float32 under every policy) are copied into it."""
    import tf_keras as keras

    keras.mixed_precision.set_global_policy("float32")
    twin = rebuild()
    twin.set_weights(model.get_weights())
    return twin


def save_serving_model(module, path: Path, signatures: dict) -> None:
    """``tf.saved_model.save`` of a :func:`serving_module`, without Keras's per-layer traces.

    Saved as is, every Keras layer's ``call`` is traced (through AutoGraph) so that Keras could
    rebuild the layers from the SavedModel alone: most of the export's time, for a model only
    ever loaded through its signatures (TensorFlow Serving, the evaluation, MLflow's pyfunc).
    The variables keep their object graph (``model/...``), so a checkpoint read into a model
    built from the spec still matches (the pruned variant is made so). tf-keras offers the
    switch only as ``save_traces`` of ``model.save``; its scope is used here, and if it moves,
    the model is saved with the traces, correct and slower.
    """
    import tensorflow as tf

    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:  # pragma: no cover - a tf-keras that moved it: save with the traces
        tf.saved_model.save(module, str(path), signatures=signatures)
        return
    with keras_option_scope(save_traces=False, in_tf_saved_model_scope=True):
        tf.saved_model.save(module, str(path), signatures=signatures)


def export(model, spec: ModelSpec, history: list[dict[str, float]], output_uri: str, checkpoint_dir: Path,
           work_dir: Path, is_chief: bool) -> None:
    """Save the SavedModel (every worker: saving is collective) and, from the chief, publish it
    with the spec, the history and the TensorBoard logs at ``output_uri``."""
    import tf_keras as keras

    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="train-"))
    try:
        module, signatures = serving_module(model, spec)
        keras.mixed_precision.set_global_policy("float32")
        save_serving_model(module, scratch / SAVED_MODEL_DIR, signatures)
        if is_chief:
            (scratch / MODEL_SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
            (scratch / HISTORY_FILE).write_text(json.dumps(history, indent=2))
            board = checkpoint_dir.parent / TENSORBOARD_DIR
            if board.is_dir():
                shutil.copytree(board, scratch / TENSORBOARD_DIR)
            storage.publish_dir(scratch, output_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_saved_model(saved_model_dir: Path):
    """``tf.saved_model.load``, once per process for the same files (keyed by the folder and each
    file's size and change time): where steps share a process (``tfpipe run``, ``airflow dags
    test``), optimize reuses the trained model evaluate loaded. Callers only read it: its
    signatures are called, its variables never assigned."""
    path = Path(saved_model_dir).resolve()
    files = tuple(sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                         for f in path.rglob("*") if f.is_file()))
    if not any(name == SAVED_MODEL_PB for name, _, _ in files):
        raise FileNotFoundError(f"no {SAVED_MODEL_PB} in {path}")
    return _load_saved_model(str(path), files)


@lru_cache(maxsize=2)
def _load_saved_model(path: str, files: tuple):
    import tensorflow as tf

    return tf.saved_model.load(path)


def read_model_spec(model_uri: str) -> ModelSpec:
    storage.require_complete(model_uri)
    return ModelSpec.from_dict(json.loads(storage.read_bytes(storage.join(model_uri, MODEL_SPEC_FILE))))


def read_history(model_uri: str) -> list[dict[str, float]]:
    return json.loads(storage.read_bytes(storage.join(model_uri, HISTORY_FILE)))
