"""TFX's penguin pipeline, the reference of ``tfpipe bench tfx``: run by TFX's own interpreter, in
its own environment (``tasks/bench/end_to_end.py`` makes it), never imported by tfpipe.

    python tfx_pipeline.py DATA_DIR PIPELINE_ROOT SERVING_DIR

The pipeline of TFX's penguin tutorials (``penguin_simple`` and ``penguin_tfma``), run with
``LocalDagRunner``: CsvExampleGen, StatisticsGen, SchemaGen, ExampleValidator, Trainer (a
Keras model of two dense layers of 8, 100 steps at batch 20, 5 eval steps at batch 10),
Evaluator (TFMA: accuracy against a 0.6 bound and no worse than the latest blessed model),
Pusher (a SavedModel into SERVING_DIR). This file is also the Trainer's module file (``run_fn``).
It prints one JSON line: the seconds the pipeline ran and whether the model was pushed.
"""

from __future__ import annotations

import json
import os
import sys
import time

# TFX 1.16 saves and evaluates Keras 2 models: tf.keras is tf-keras, as in tfpipe.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

FEATURE_KEYS = ["culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g"]
LABEL_KEY = "species"
TRAIN_STEPS, TRAIN_BATCH, EVAL_STEPS, EVAL_BATCH = 100, 20, 5, 10


def _input_fn(file_pattern, data_accessor, schema, batch_size):
    from tfx_bsl.public import tfxio

    return data_accessor.tf_dataset_factory(
        file_pattern, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=LABEL_KEY), schema=schema
    ).repeat()


def run_fn(fn_args) -> None:
    """The Trainer's entry point (TFX's module-file contract)."""
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow_transform.tf_metadata import schema_utils

    spec = {**{key: tf.io.FixedLenFeature([1], tf.float32) for key in FEATURE_KEYS},
            LABEL_KEY: tf.io.FixedLenFeature([1], tf.int64)}
    schema = schema_utils.schema_from_feature_spec(spec)
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, schema, TRAIN_BATCH)
    evaluation = _input_fn(fn_args.eval_files, fn_args.data_accessor, schema, EVAL_BATCH)
    inputs = [keras.layers.Input(shape=(1,), name=key) for key in FEATURE_KEYS]
    hidden = keras.layers.concatenate(inputs)
    for _ in range(2):
        hidden = keras.layers.Dense(8, activation="relu")(hidden)
    model = keras.Model(inputs=inputs, outputs=keras.layers.Dense(3)(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy()])
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evaluation,
              validation_steps=fn_args.eval_steps, verbose=0)
    model.save(fn_args.serving_model_dir, save_format="tf")


def build_pipeline(data_dir: str, root: str, serving_dir: str):
    import tensorflow_model_analysis as tfma
    from tfx import v1 as tfx

    example_gen = tfx.components.CsvExampleGen(input_base=data_dir)
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=True)
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    trainer = tfx.components.Trainer(
        module_file=os.path.abspath(__file__), examples=example_gen.outputs["examples"],
        train_args=tfx.proto.TrainArgs(num_steps=TRAIN_STEPS), eval_args=tfx.proto.EvalArgs(num_steps=EVAL_STEPS))
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    accuracy = tfma.MetricConfig(class_name="SparseCategoricalAccuracy", threshold=tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": 0.6}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -1e-10})))
    eval_config = tfma.EvalConfig(model_specs=[tfma.ModelSpec(label_key=LABEL_KEY)],
                                  slicing_specs=[tfma.SlicingSpec()],
                                  metrics_specs=[tfma.MetricsSpec(metrics=[accuracy])])
    evaluator = tfx.components.Evaluator(examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
                                         baseline_model=baseline.outputs["model"], eval_config=eval_config)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)))
    return tfx.dsl.Pipeline(
        pipeline_name="penguin", pipeline_root=os.path.join(root, "pipeline"),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.db")),
        components=[example_gen, statistics, schema, validator, trainer, baseline, evaluator, pusher])


def main(argv: list[str]) -> int:
    data_dir, root, serving_dir = argv
    started = time.perf_counter()
    from tfx import v1 as tfx

    tfx.orchestration.LocalDagRunner().run(build_pipeline(data_dir, root, serving_dir))
    pushed = os.path.isdir(serving_dir) and bool(os.listdir(serving_dir))
    print(json.dumps({"seconds": time.perf_counter() - started, "pushed": pushed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
