"""``tfpipe bench gpu``: every GPU branch of the engine, run and measured in one command.

Checks (the same ``tfpipe datagen`` data, model, batch and epochs for each training):
  one_device          float32 on one GPU: the reference of the others
  mixed_float16       train.mixed_precision float16 (loss scaling, float32 logits)
  xla                 train.jit_compile on: the model's part of the step compiled by XLA
  mirrored_all_gpus   train.strategy mirrored over every GPU, the same global batch
  tensorrt_fp16       the optimize step's TF-TRT FP16 variant of the one_device model, its
                      batch-1 latency and throughput against the SavedModel's

What a check needs and does not find (a GPU, a CUDA build of TensorFlow, a second GPU,
TensorRT) makes it a recorded skip with its reason, never a failure: on a machine without a
GPU every check is skipped and the command says what to install.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

CHECKS = ("one_device", "mixed_float16", "xla", "mirrored_all_gpus", "tensorrt_fp16")
SETTINGS = {"one_device": {"strategy": "one_device"}, "mixed_float16": {"strategy": "one_device",
                                                                         "mixed_precision": "float16"},
            "xla": {"strategy": "one_device", "jit_compile": "on"}, "mirrored_all_gpus": {"strategy": "mirrored"}}


def gpu_unavailable() -> str | None:
    """Why TensorFlow sees no GPU here, with what it needs; None when it sees one."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None
    if not tf.test.is_built_with_cuda():
        return (f"this TensorFlow {tf.__version__} is a CPU build: the GPU branches need TensorFlow 2.16 with CUDA 12 "
                "(pip install 'tensorflow[and-cuda]==2.16.*', an NVIDIA driver >= 525)")
    return ("no GPU visible to TensorFlow: it needs an NVIDIA GPU and driver (>= 525) and CUDA 12's libraries "
            "(pip install 'tensorflow[and-cuda]==2.16.*'); check CUDA_VISIBLE_DEVICES and the container's GPU access")


def skip_reasons() -> dict[str, str]:
    """The checks that cannot run here, each with its reason."""
    import tensorflow as tf

    from tasks.optimize import tensorrt_unavailable

    missing = gpu_unavailable()
    if missing:
        return {name: missing for name in CHECKS}
    skipped = {}
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus < 2:
        skipped["mirrored_all_gpus"] = f"needs 2 GPUs or more, found {gpus}"
    trt = tensorrt_unavailable()
    if trt:
        skipped["tensorrt_fp16"] = f"TF-TRT needs a GPU and TensorRT: {trt}"
    return skipped


def bench_gpu(rows: int, columns: int = 20, repeat: int = 1, epochs: int = 3, batch_size: int = 16384,
              workdir: Path | None = None) -> dict:
    from tasks.bench.common import prepare_examples, run_variants, suite_report

    skipped = skip_reasons()
    params = {"rows": rows, "columns": columns, "epochs": epochs, "global_batch_size": batch_size,
              "hidden_units": [256, 256], "repeat": repeat}
    if len(skipped) == len(CHECKS):
        return suite_report("gpu", params, {}, {}, "examples/s", [], extra={"skipped": skipped})
    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-", dir=workdir))
    try:
        data = prepare_examples(root / "data", rows, columns=columns, task="binary", hidden_units=(256, 256))
        variants = {name: _training(root, data, epochs, batch_size, name) for name in SETTINGS if name not in skipped}
        measured = run_variants(variants, repeat)
        for row in measured.values():
            row["seconds"] = 1.0 / row["result"]["examples_per_second"]
        losses = {name: round(row["result"]["eval_loss"], 4) for name, row in measured.items()}
        result = suite_report("gpu", params, measured, {name: 1 for name in measured}, "examples/s",
                              [(name, "one_device") for name in measured if name != "one_device"],
                              extra={"skipped": skipped, "final_eval_loss": losses})
        result["checks"] = {f"{name}_eval_loss_within_10pct_of_one_device": abs(loss - losses["one_device"])
                            <= 0.1 * losses["one_device"] for name, loss in losses.items() if name != "one_device"}
        if "tensorrt_fp16" not in skipped:
            result["tensorrt_fp16"] = _tensorrt(root, data, measured["one_device"]["result"]["model_uri"])
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _training(root: Path, data, epochs: int, batch_size: int, name: str):
    """One check's training run on the prepared examples."""
    from tasks.bench.common import training_settings
    from tasks.config import TrainConfig
    from tasks.training.loop import train_model

    def run_once() -> dict[str, Any]:
        config = TrainConfig(**training_settings(epochs, batch_size), **SETTINGS[name])
        run = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
        result = train_model(data.uri, data.spec, config, str(run / "model"), run / "ckpt", root / "cache",
                             run / "work")
        return {"examples_per_second": result.examples_per_second, "eval_loss": result.final_metrics["eval_loss"],
                "model_uri": result.uri}

    return run_once


def _tensorrt(root: Path, data, model_uri: str) -> dict[str, Any]:
    """The optimize step's TF-TRT variant of the one_device model, as its report rows."""
    from tasks.config import OptimizeConfig
    from tasks.optimize import optimize_model

    report = optimize_model(model_uri, data.uri, OptimizeConfig(variants=["tensorrt_fp16"]), str(root / "optimized"),
                            root / "cache", root / "work").report
    return {name: report["variants"][name] for name in ("saved_model", "tensorrt_fp16")}
