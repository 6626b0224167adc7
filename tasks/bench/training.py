"""``tfpipe bench input|train|batch``: the training input pipeline and the training loop, measured.

input (one epoch of the train split, batch 1024, parsed into model inputs):
  ours            tasks.training.inputs, first epoch: parallel interleave of the GZIP shards in blocks,
                  tf.io.parse_example per block, block shuffle + windowed permutation,
                  rebatch, prefetch; parallelism and prefetch autotuned (train.autotune)
  ours_cached     the same pipeline in a later epoch: its in-memory cache of parsed blocks
  ours_untuned    ours (and ours_untuned_cached) with train.autotune false: every stage on
                  every core, tf.data's autotuner off
  naive           one example parsed at a time, then batched, no prefetch
  floor           tf.io.parse_example (a map on every core, autotuner off) on
                  batches of decompressed records already in memory: parsing and nothing else

train (same model, data, global batch, optimizer and schedule):
  ours            tasks.training: custom tf.GradientTape loop, steps_per_execution, eval and a
                  checkpoint per epoch (train.jit_compile off)
  ours_xla        the same with train.jit_compile on: the model after its lookups compiled by XLA
  ours_bf16       the same with train.mixed_precision bfloat16 (CPU machines; mixed_float16 on GPUs:
                  ours_fp16): 16-bit compute, float32 weights and logits
  keras_fit       tf_keras Model.fit on the same tf.data pipeline, with the same validation and
                  checkpoint per epoch (BackupAndRestore)
  workers_1       one multi_worker process pinned to one core          (CPU machines)
  workers_2       two multi_worker processes, each pinned to its own core, same global batch
  one_device / mirrored_all_gpus                                        (GPU machines)

batch (accuracy as the global batch grows, as with batch_size_per_replica over more replicas):
  batch_1x        the batch per replica (default 64), train.learning_rate as set
  batch_Nx        N times the batch (N = 4, 16), the learning rate as set (train.lr_scaling none)
  batch_Nx_linear the same at the peak of train.lr_scaling linear (x N); _sqrt: x sqrt(N)

Throughput is training examples per second of the training loop (tracing, evaluation and
checkpoints included, process start-up and export excluded); the variants' final eval losses
are reported so that a faster variant that learned less shows.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.bench.common import prepare_examples, run_variants, suite_report, training_settings


def _count(dataset, steps: int) -> int:
    seen = 0
    for features, labels in dataset.take(steps):
        seen += int(labels.shape[0])
    return seen


def bench_input(rows: int, columns: int = 20, repeat: int = 3, batch_size: int = 1024,
                workdir: Path | None = None) -> dict:
    from tasks.training.inputs import InputPipeline, floor_dataset, in_memory_batches, naive_dataset

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root, rows, columns=columns, task="binary")
        files = data.files["train"]
        steps = data.counts["train"] // batch_size
        if steps < 1:
            raise ValueError(f"--rows {rows} gives fewer train examples than one batch of {batch_size}")
        examples = steps * batch_size
        from tasks.coders import iter_gzip_tfrecords

        records = [r for f in files for chunk in iter_gzip_tfrecords(f) for r in chunk]
        batches = in_memory_batches(records, batch_size)
        del records

        def first_epoch(autotune: bool):
            return lambda: _count(
                InputPipeline(files, data.spec, batch_size, seed=1, cache=True, autotune=autotune).epoch(0), steps)

        cached = {autotune: InputPipeline(files, data.spec, batch_size, seed=1, cache=True, autotune=autotune)
                  for autotune in (True, False)}
        epochs = iter(range(1, 10_000))

        def later_epoch(autotune: bool):
            return lambda: _count(cached[autotune].epoch(next(epochs)), steps)

        variants = {
            "ours": first_epoch(True),
            "ours_cached": later_epoch(True),
            "ours_untuned": first_epoch(False),
            "ours_untuned_cached": later_epoch(False),
            "naive": lambda: _count(naive_dataset(files, data.spec, batch_size), steps),
            "floor": lambda: _count(floor_dataset(batches, data.spec), steps),
        }
        for pipeline in cached.values():  # fills the caches
            _count(pipeline.epoch(0), steps)
        for _ in batches:
            pass
        for fn in variants.values():  # warm-up: graphs built, files in the page cache
            fn()
        measured = run_variants(variants, repeat)
        # This frame can outlive the call (through a frame TensorFlow keeps): let go of the datasets
        # and their traced functions now, not at interpreter exit, where their __del__ fails noisily.
        cached = batches = variants = None
        checks = {f"{name}_examples": row["result"] for name, row in measured.items()}
        assert all(count == examples for count in checks.values()), checks
        result = suite_report(
            "input", {"rows": rows, "columns": columns, "train_examples": examples, "batch_size": batch_size,
                      "repeat": repeat},
            measured, {name: examples for name in measured}, "examples/s",
            [("ours", "naive"), ("ours", "floor"), ("ours_cached", "naive"), ("ours_cached", "floor"),
             ("ours_untuned", "floor"), ("ours_untuned_cached", "floor")],
            extra={"checks": checks},
        )
        ratios = result["ratios"]
        result["targets"] = {
            "ours/naive >= 5": ratios["ours/naive"] >= 5,
            "ours/floor >= 0.7": ratios["ours/floor"] >= 0.7,
            "ours_cached/floor >= 0.7": ratios["ours_cached/floor"] >= 0.7,
        }
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _keras_fit(data, params, checkpoint_dir: Path) -> dict[str, Any]:
    """The same model, pipeline, optimizer and schedule through ``Model.fit``."""
    import tensorflow as tf
    import tf_keras as keras

    from tasks.training.inputs import InputPipeline, eval_dataset
    from tasks.training.model import build
    from tasks.training.optimization import learning_rate_schedule, loss_function

    keras.utils.set_random_seed(params.seed)
    steps = data.counts["train"] // params.batch_size
    pipeline = InputPipeline(data.files["train"], data.spec, params.batch_size, params.seed, cache=True,
                             autotune=params.autotune)
    model = build(data.spec, params)
    schedule = learning_rate_schedule(params, steps * params.epochs, steps)
    optimizer = keras.optimizers.Adam(schedule, global_clipnorm=params.clip_norm)
    per_example = loss_function(data.spec)
    model.compile(optimizer=optimizer, loss=lambda y, logits: tf.reduce_mean(per_example(y, logits)),
                  steps_per_execution=params.steps_per_execution)
    # One dataset across epochs: Model.fit re-iterates it; the epoch order differs, the work does not.
    train = pipeline.epoch(0)
    eval_batch = max(params.batch_size, 256)
    clock = _SteadyClock(keras, params.batch_size)
    history = model.fit(
        train, epochs=params.epochs, steps_per_epoch=steps, verbose=0,
        validation_data=eval_dataset(data.files["eval"], data.spec, eval_batch, autotune=params.autotune),
        validation_steps=-(-data.counts["eval"] // eval_batch),
        callbacks=[keras.callbacks.BackupAndRestore(str(checkpoint_dir)), clock],
    )
    clock.stop()
    if not clock.examples:
        raise ValueError("too few steps to time Model.fit after its first call: use more rows or a smaller batch")
    return {"examples_per_second": clock.examples / clock.seconds, "eval_loss": float(history.history["val_loss"][-1])}


def _SteadyClock(keras, batch_size: int):  # noqa: N802 - builds a Keras callback class lazily
    """Times ``Model.fit`` from the end of its first call (which traces), as tasks.training.loop does."""

    class SteadyClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.since, self.examples, self.seconds, self.last = None, 0, 0.0, -1

        def on_epoch_begin(self, epoch, logs=None):
            self.last = -1

        def on_train_batch_end(self, batch, logs=None):
            # With steps_per_execution, ``batch`` is the last step of the call just finished.
            if self.since is None:
                self.since = time.perf_counter()
            else:
                self.examples += (batch - self.last) * batch_size
            self.last = batch

        def stop(self):
            self.seconds = time.perf_counter() - self.since

    return SteadyClock()


def bench_train(rows: int, columns: int = 20, repeat: int = 3, epochs: int = 3, batch_size: int = 16384,
                workdir: Path | None = None, autotune: bool = True) -> dict:
    import tensorflow as tf

    from tasks.config import TrainConfig
    from tasks.training.distribution import cpu_has_bfloat16
    from tasks.training.launcher import core_sets, launch
    from tasks.training.loop import train_model

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root / "data", rows, columns=columns, task="binary", hidden_units=(256, 256))
        base = {**training_settings(epochs, batch_size), "autotune": autotune}
        runs = iter(range(10**6))

        def ours(jit_compile: str = "off", precision: str = "off"):
            def run_once() -> dict[str, Any]:
                run = root / f"ours-{jit_compile}-{precision}-{next(runs)}"
                config = TrainConfig(**base, jit_compile=jit_compile, mixed_precision=precision)
                result = train_model(data.uri, data.spec, config,
                                     str(run / "model"), run / "ckpt", root / "cache", run / "work")
                return {"examples_per_second": result.examples_per_second,
                        "eval_loss": result.final_metrics["eval_loss"]}
            return run_once

        def keras_fit() -> dict[str, Any]:
            return _keras_fit(data, TrainConfig(**base), root / f"keras-{next(runs)}")

        def workers(count: int, strategy: str, cores: list[list[int]] | None):
            def run() -> dict[str, Any]:
                name = f"{strategy}-{count}-{next(runs)}"
                request = {
                    "examples_uri": data.uri, "spec": data.spec.to_dict(),
                    "params": TrainConfig(**base, strategy=strategy).model_dump(mode="json"),
                    "output_uri": str(root / name / "model"), "checkpoint_dir": str(root / name / "ckpt"),
                    "cache_dir": str(root / "cache"), "work_dir": str(root / name / "work"),
                }
                result = launch(request, count, root / name / "run", pin_cores=cores or False)
                return {"examples_per_second": result["examples_per_second"],
                        "eval_loss": result["final_metrics"]["eval_loss"], "peak_rss_mb": result["peak_rss_mb"]}
            return run

        gpus = tf.config.list_physical_devices("GPU")
        half = "ours_fp16" if gpus else "ours_bf16"
        variants = {"ours": ours(), "ours_xla": ours("on"), half: ours(precision="on"), "keras_fit": keras_fit}
        pairs = [("ours", "keras_fit"), ("ours_xla", "ours"), (half, "ours")]
        if gpus:
            variants["one_device"] = workers(1, "one_device", None)
            if len(gpus) > 1:
                variants["mirrored_all_gpus"] = workers(1, "mirrored", None)
                pairs.append(("mirrored_all_gpus", "one_device"))
        else:
            cores = core_sets(2)
            if cores[0]:
                variants["workers_1"] = workers(1, "multi_worker", [cores[0][:1]])
                variants["workers_2"] = workers(2, "multi_worker", [c[:1] for c in cores])
                pairs.append(("workers_2", "workers_1"))
        measured = run_variants(variants, repeat)
        for row in measured.values():  # throughput of the training loop, as each variant measured it
            row["seconds"] = 1.0 / row["result"]["examples_per_second"]
            if "peak_rss_mb" in row["result"]:  # a worker process: the chief's peak, not the launcher's
                row["peak_rss_mb"] = row["result"]["peak_rss_mb"]
        result = suite_report(
            "train", {"rows": rows, "columns": columns, "train_examples": data.counts["train"], "epochs": epochs,
                      "global_batch_size": batch_size, "hidden_units": [256, 256], "repeat": repeat,
                      "autotune": autotune, "cpu_native_bfloat16": cpu_has_bfloat16()},
            measured, {name: 1 for name in measured}, "examples/s", pairs,
            extra={"final_eval_loss": {name: round(row["result"]["eval_loss"], 4) for name, row in measured.items()}},
        )
        for row in result["variants"].values():  # seconds per example is not worth printing
            row["seconds"] = round(epochs * data.counts["train"] / row["throughput"], 3)
        losses = result["final_eval_loss"]
        result["checks"] = {
            f"{name}_eval_loss_within_10pct_of_ours": abs(loss - losses["ours"]) <= 0.1 * losses["ours"]
            for name, loss in losses.items() if name != "ours"
        }
        result["targets"] = {"ours/keras_fit >= 1": result["ratios"]["ours/keras_fit"] >= 1}
        if "workers_2/workers_1" in result["ratios"]:
            result["targets"]["workers_2/workers_1 >= 1.6"] = result["ratios"]["workers_2/workers_1"] >= 1.6
        if "mirrored_all_gpus/one_device" in result["ratios"]:
            result["targets"]["mirrored_all_gpus/one_device >= 1.6"] = (
                result["ratios"]["mirrored_all_gpus/one_device"] >= 1.6)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_batch(rows: int, columns: int = 20, repeat: int = 1, epochs: int = 3, batch_size: int = 64,
                workdir: Path | None = None, factors: tuple[int, ...] = (1, 4, 16)) -> dict:
    """Accuracy as the global batch grows ``factors`` times (as it does with batch_size_per_replica
    over more replicas), with the learning rate as set and scaled by each train.lr_scaling rule.
    The same data, model, epochs and warm-up; one device, since the loss is averaged over the
    global batch whatever the replicas (tests/tasks/test_train.py checks that mirrored, multi_worker
    and one device train to the same weights)."""
    from tasks.config import TrainConfig
    from tasks.training.loop import train_model
    from tasks.training.optimization import peak_learning_rate

    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root / "data", rows, columns=columns, task="binary", hidden_units=(64, 32))
        # batch_size_per_replica sets the global batch (batch_size is then ignored).
        base = {**training_settings(epochs, batch_size, (64, 32)), "warmup_fraction": 0.1,
                "batch_size_per_replica": batch_size}
        runs = iter(range(10**6))

        def variant(factor: int, rule: str):
            def run_once() -> dict[str, Any]:
                scaled = TrainConfig(**base, lr_scaling=rule)
                # One device with the global batch of `factor` replicas, at the rule's peak.
                config = TrainConfig(**{**base, "batch_size_per_replica": None, "batch_size": batch_size * factor,
                                        "learning_rate": peak_learning_rate(scaled, batch_size * factor)})
                run = root / f"{factor}-{rule}-{next(runs)}"
                result = train_model(data.uri, data.spec, config, str(run / "model"), run / "ckpt", root / "cache",
                                     run / "work")
                return {"examples_per_second": result.examples_per_second, "learning_rate": config.learning_rate,
                        **{k: result.final_metrics[k] for k in ("eval_loss", "eval_accuracy")}}
            return run_once

        variants = {f"batch_{factors[0]}x": variant(factors[0], "none")}
        for factor in factors[1:]:
            for rule in ("none", "linear", "sqrt"):
                variants[f"batch_{factor}x" + ("" if rule == "none" else f"_{rule}")] = variant(factor, rule)
        measured = run_variants(variants, repeat)
        for row in measured.values():
            row["seconds"] = 1.0 / row["result"]["examples_per_second"]
        result = suite_report(
            "batch", {"rows": rows, "columns": columns, "train_examples": data.counts["train"], "epochs": epochs,
                      "batch_size_per_replica": batch_size, "factors": list(factors), "repeat": repeat},
            measured, {name: 1 for name in measured}, "examples/s", [],
            extra={key: {name: round(row["result"][key], 4) for name, row in measured.items()}
                   for key in ("eval_accuracy", "eval_loss", "learning_rate")},
        )
        for row in result["variants"].values():
            row["seconds"] = round(epochs * data.counts["train"] / row["throughput"], 3)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)
