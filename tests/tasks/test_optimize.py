"""optimize_model: every variant built, measured against the original, kept or rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.config import OptimizeConfig, PruningConfig, QatConfig
from tasks.optimize import optimize_model
from tasks.artifacts import FEATURES_SIGNATURE, SERVING_SIGNATURE


@pytest.fixture(scope="module")
def optimized(trained):
    config = OptimizeConfig(representative_examples=64, pruning=PruningConfig(target_sparsity=0.6, epochs=2),
                            latency_runs=30, throughput_batch=256)
    return optimize_model(trained["model"].uri, trained["examples"].uri, config, str(trained["root"] / "optimized"),
                          trained["cache"], trained["work"], throughput_seconds=0.1)



def test_optimize_measures_every_variant_against_the_original(trained, optimized):
    variants = optimized.report["variants"]
    original = variants["saved_model"]
    assert list(variants) == ["saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic_range",
                              "tflite_int8", "pruned", "tensorrt_fp16"]
    for name, row in variants.items():
        if row.get("skipped"):
            continue
        assert row["size_bytes"] > 0 and 0 < row["gzip_bytes"], name
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"], name
        assert row["throughput_per_second"] > 0, name
        assert abs(row["accuracy"] - original["accuracy"]) == pytest.approx(abs(row["quality_drop"])), name
    assert variants["tflite_float32"]["accuracy"] == original["accuracy"]  # the same model, unquantized
    assert variants["tflite_dynamic_range"]["size_bytes"] < original["size_bytes"]
    # This model's weights are tiny: float16 saves less than its dequantize ops add, so only quality is checked.
    assert variants["tflite_float16"]["quality_drop"] <= 0.02
    assert variants["tflite_int8"]["representative_examples"] == 64
    assert json.loads((Path(optimized.uri) / "report.json").read_text()) == optimized.report
    assert (Path(optimized.uri) / "tradeoff.png").read_bytes().startswith(b"\x89PNG")
    for name in optimized.kept[1:]:
        assert (Path(optimized.uri) / variants[name]["file"]).exists(), name



def test_int8_variant_runs_integer_kernels(optimized):
    import tensorflow as tf

    model = (Path(optimized.uri) / optimized.report["variants"]["tflite_int8"]["file"]).read_bytes()
    kinds = {d["dtype"] for d in tf.lite.Interpreter(model_content=model).get_tensor_details()}
    assert np.int8 in kinds  # quantized weights and activations
    assert optimized.report["variants"]["tflite_int8"]["quality_drop"] <= 0.02



@pytest.mark.slow
def test_qat_int8_variant_is_fine_tuned_measured_and_judged_like_the_others(trained, tmp_path):
    import tensorflow as tf
    import tf_keras as keras

    from tasks.quantization import quantize_dense_layers

    config = OptimizeConfig(variants=["tflite_int8", "qat_int8"], representative_examples=64,
                            qat=QatConfig(epochs=2, batch_size=32), latency_runs=30, throughput_batch=256)
    result = optimize_model(trained["model"].uri, trained["examples"].uri, config, str(tmp_path / "optimized"),
                            trained["cache"], trained["work"], throughput_seconds=0.1)
    variants = result.report["variants"]
    assert list(variants) == ["saved_model", "tflite_int8", "qat_int8"]
    row, original, post_training = variants["qat_int8"], variants["saved_model"], variants["tflite_int8"]
    assert row["kind"] == "tflite" and row["qat_epochs"] == 2 and row["representative_examples"] == 64
    assert 0 < row["gzip_bytes"] and 0 < row["size_bytes"] < original["size_bytes"]
    assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["throughput_per_second"] > 0
    assert row["quality_drop"] == pytest.approx(original["accuracy"] - row["accuracy"])
    assert row["kept"] == (row["quality_drop"] <= config.max_accuracy_drop) and row["kept"]
    assert row["accuracy"] >= post_training["accuracy"] - 0.02  # the fine-tuning did not break what int8 keeps
    model = (Path(result.uri) / row["file"]).read_bytes()
    kinds = {d["dtype"] for d in tf.lite.Interpreter(model_content=model).get_tensor_details()}
    assert np.int8 in kinds  # quantized weights and activations
    assert model != (Path(result.uri) / post_training["file"]).read_bytes()  # fine-tuned weights, learned ranges
    assert sorted(p.name for p in Path(result.uri).iterdir()) == [
        "_SUCCESS", "model_int8.tflite", "model_qat_int8.tflite", "report.json", "tradeoff.png"]
    with pytest.raises(ValueError, match="no dense layer"):  # optimize_model records these as skips
        quantize_dense_layers(keras.Sequential([keras.Input((2,)), keras.layers.Flatten()]))


def test_one_converter_makes_every_variant_as_a_fresh_one_would(trained):
    """optimize_model loads the SavedModel into one converter for all TFLite variants: each
    conversion sets every option it reads, so none leaks into the next (int8's calibration
    into dynamic range, float16's types into float32)."""
    from tasks.optimize import TFLITE_VARIANTS, convert_tflite, raw_features, tflite_converter
    from tasks.artifacts import Examples
    from tasks.coders import first_records
    from tasks.training.export import read_model_spec

    saved_model = trained["model"].saved_model(trained["cache"])
    files = Examples.open(trained["examples"].uri).files("train", trained["cache"])
    representative = raw_features(read_model_spec(trained["model"].uri), first_records(files, 16))
    shared = tflite_converter(saved_model)
    order = ("int8", "dynamic_range", "float16", "float32")  # the options a variant sets come first
    assert sorted(order) == sorted(TFLITE_VARIANTS)
    for variant in order:
        calibration = representative if variant == "int8" else None
        assert convert_tflite(saved_model, variant, calibration, shared) == convert_tflite(saved_model, variant, calibration), variant


def test_pruned_variant_reaches_its_sparsity_and_serves(trained, optimized):
    import tensorflow as tf

    row = optimized.report["variants"]["pruned"]
    assert set(row["sparsity"]) == {"hidden_0", "logits"}
    assert all(s == pytest.approx(0.6, abs=0.02) for s in row["sparsity"].values())
    loaded = tf.saved_model.load(str(Path(optimized.uri) / row["file"]))
    assert set(loaded.signatures) == {SERVING_SIGNATURE, FEATURES_SIGNATURE}
    kernel = [v for v in loaded.signatures[FEATURES_SIGNATURE].variables if "hidden_0/kernel" in v.name][0].numpy()
    assert np.mean(kernel == 0) == pytest.approx(0.6, abs=0.02)



def test_tensorrt_without_a_gpu_is_a_recorded_skip(optimized):
    import tensorflow as tf

    row = optimized.report["variants"]["tensorrt_fp16"]
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the variant is built and measured instead")
    assert row["skipped"] and not row["kept"] and "no GPU" in row["reason"]



def test_a_variant_beyond_the_tolerance_is_rejected_and_not_published(trained, tmp_path):
    # A tolerance below zero (which the YAML refuses; model_copy does not validate): no variant can
    # pass, not even one as good as the original.
    config = OptimizeConfig(variants=["tflite_float32"], latency_runs=10, throughput_batch=64)
    result = optimize_model(trained["model"].uri, trained["examples"].uri,
                            config.model_copy(update={"max_accuracy_drop": -0.5}), str(tmp_path / "optimized"),
                            trained["cache"], trained["work"], throughput_seconds=0.05)
    row = result.report["variants"]["tflite_float32"]
    assert not row["kept"] and "exceeds optimize.max_accuracy_drop -0.5" in row["reason"]
    assert result.kept == ["saved_model"]
    assert not (tmp_path / "optimized" / row["file"]).exists()
