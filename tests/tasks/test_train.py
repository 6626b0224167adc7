"""The training loop: heads, schedule, tracing, early stopping, distribution, checkpoints and resume.

The distributed cases run as real worker processes (``tasks.training.launcher``): ``mirrored`` over the
CPU split into two logical devices, and ``multi_worker`` as two processes talking gRPC on
127.0.0.1. Both must train to the same weights as one device on the same global batch.
``parameter_server`` runs a chief, two workers and a parameter server, and must train as
well as one device (its updates are asynchronous, so not to the same weights).
"""

import gzip
import json
import math
import os
import re
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest

from tasks.artifacts import FEATURES_SIGNATURE, SERVING_SIGNATURE
from tasks.bench.common import prepare_examples
from tasks.config import TrainConfig
from tasks.training.launcher import WorkerFailed, core_sets, launch
from tasks.training.optimization import learning_rate_schedule
from tasks.training.export import read_history, read_model_spec
from tasks.training.loop import train_model
from tests.helpers import Recorder, run_concurrently
from tests.servers import tensorboard



@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return prepare_examples(tmp_path_factory.mktemp("binary"), 6000, columns=10, task="binary", hidden_units=(16,))


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    return prepare_examples(tmp_path_factory.mktemp("regression"), 6000, columns=10, task="regression",
                            hidden_units=(16,))


def _train(data, tmp_path, name="run", progress=None, checkpoint_uri=None, **params):
    config = TrainConfig(**{"epochs": 3, "batch_size": 64, "learning_rate": 0.01, **params})
    return train_model(data.uri, data.spec, config, str(tmp_path / name / "model"), tmp_path / name / "ckpt",
                       tmp_path / "cache", tmp_path / name / "work", progress=progress, checkpoint_uri=checkpoint_uri)


def _request(data, tmp_path, name, **params):
    config = TrainConfig(**{"epochs": 2, "batch_size": 64, "learning_rate": 0.01, **params})
    return {
        "examples_uri": data.uri, "spec": data.spec.to_dict(), "params": config.model_dump(mode="json"),
        "output_uri": str(tmp_path / name / "model"), "checkpoint_dir": str(tmp_path / name / "ckpt"),
        "cache_dir": str(tmp_path / "cache"), "work_dir": str(tmp_path / name / "work"),
    }


def _predict(model_uri, records):
    import tensorflow as tf

    serve = tf.saved_model.load(str(Path(model_uri) / "saved_model")).signatures["serving_default"]
    outputs = serve(examples=tf.constant(records))
    return (outputs.get("scores", outputs.get("predictions"))).numpy()


def _eval_records(data, n=256):
    from tasks.coders import iter_gzip_tfrecords

    records = []
    for f in data.files["eval"]:
        for chunk in iter_gzip_tfrecords(f):
            records += chunk
    return records[:n]


def test_binary_head_learns_and_traces_each_function_once(binary, tmp_path):
    progress = Recorder()
    result = _train(binary, tmp_path, progress=progress, steps_per_execution=5, checkpoint_every_steps=7)
    per_epoch = binary.counts["train"] // 64
    # Executions of 5 steps, cut short at checkpoints and epoch ends: several lengths, one trace.
    assert result.traces == {"train_steps": 1, "eval_step": 1}
    assert [s[0] for s in progress.steps] == list(range(1, 3 * per_epoch + 1))
    assert result.steps == 3 * per_epoch and result.epochs == 3
    majority = 0.5 + abs(0.5 - _label_mean(binary))
    assert progress.epochs[-1]["eval_accuracy"] > majority + 0.1
    assert progress.epochs[-1]["eval_loss"] < progress.epochs[0]["eval_loss"]
    history = read_history(result.uri)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (Path(result.uri) / "tensorboard").is_dir()


def _label_mean(data):
    import tensorflow as tf

    labels = [tf.train.Example.FromString(r).features.feature["label"].int64_list.value[0]
              for r in _eval_records(data, 10_000)]
    return float(np.mean(labels))


def test_regression_head_beats_predicting_the_mean(regression, tmp_path):
    import tensorflow as tf

    result = _train(regression, tmp_path, epochs=4)
    records = _eval_records(regression, 10_000)
    labels = np.array([tf.train.Example.FromString(r).features.feature["label"].float_list.value[0] for r in records])
    predicted = _predict(result.uri, records)
    assert predicted.shape == labels.shape
    assert np.mean((predicted - labels) ** 2) < 0.6 * np.var(labels)


def test_learning_rate_warms_up_then_decays():
    params = TrainConfig(learning_rate=0.1, warmup_fraction=0.1, lr_schedule="cosine", min_learning_rate_ratio=0.0)
    cosine = learning_rate_schedule(params, total_steps=1000, steps_per_epoch=100)
    values = [float(cosine(s)) for s in (0, 49, 99, 100, 550, 999)]
    assert values[0] == pytest.approx(0.001) and values[1] == pytest.approx(0.05)
    assert values[2] == pytest.approx(0.1) and values[3] == pytest.approx(0.1)
    assert values[4] == pytest.approx(0.05, rel=0.02) and values[5] < 1e-4
    exponential = learning_rate_schedule(params.model_copy(update={"lr_schedule": "exponential", "decay_rate": 0.5}),
                                         total_steps=1000, steps_per_epoch=100)
    assert float(exponential(100)) == pytest.approx(0.1)
    assert float(exponential(300)) == pytest.approx(0.025)


def test_learning_rate_reported_per_step_follows_the_schedule(binary, tmp_path):
    progress = Recorder()
    _train(binary, tmp_path, progress=progress, epochs=2, steps_per_execution=1, warmup_fraction=0.25)
    rates = [s[2] for s in progress.steps]
    peak = int(np.argmax(rates))
    assert 0.2 * len(rates) < peak < 0.3 * len(rates)
    assert rates[peak] == pytest.approx(0.01, rel=0.05)
    assert rates[-1] < 0.01 * rates[peak] + 1e-6


def test_early_stopping_exports_the_best_epoch(binary, tmp_path):
    # No decrease of the eval loss is large enough to count: stop after `patience` epochs.
    result = _train(binary, tmp_path, epochs=10, early_stopping={"patience": 2, "min_delta": 1e9})
    history = read_history(result.uri)
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1
    assert result.final_metrics["eval_loss"] == pytest.approx(history[0]["eval_loss"])


def test_custom_model_function_from_a_module_path(binary, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import tf_keras as keras\n"
        "def linear(spec, seed):\n"
        "    inputs = {f.name: keras.Input(shape=(1,), dtype='float32', name=f.name)\n"
        "              for f in spec.features if not f.categorical}\n"
        "    x = keras.layers.Concatenate()(list(inputs.values()))\n"
        "    x = keras.layers.BatchNormalization()(x)\n"
        "    return keras.Model(inputs, keras.layers.Dense(1, name='my_linear')(x))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = _train(binary, tmp_path, model_fn="my_models:linear", epochs=2)
    assert result.final_metrics["eval_accuracy"] > 0.5 + abs(0.5 - _label_mean(binary))
    with pytest.raises(ValueError, match="has no function 'missing'"):
        _train(binary, tmp_path, name="bad", model_fn="my_models:missing")


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_mixed_precision_trains_and_serves_float32(binary, tmp_path, precision):
    import tensorflow as tf

    from tasks.optimize import convert_tflite

    result = _train(binary, tmp_path, epochs=2, mixed_precision=precision)
    assert result.mixed_precision and result.precision == f"mixed_{precision}"
    # Exported with float32 compute: no half-precision tensor in the served graph, and TFLite converts it.
    saved_model = Path(result.uri) / "saved_model"
    graph = tf.saved_model.load(str(saved_model)).signatures["serving_default"].graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    assert len(nodes) > 50 and not [node.name for node in nodes if node.op == "Cast" and
                                    node.attr["DstT"].type in (tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum)]
    assert convert_tflite(saved_model, "float32")
    scores = _predict(result.uri, _eval_records(binary, 32))
    assert scores.dtype == np.float32 and np.allclose(scores.sum(axis=1), 1, atol=1e-3)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    """One shard for two workers: every worker reads it and keeps its half of each global batch
    (AutoShardPolicy.DATA), so the global batches are exactly one device's."""
    return prepare_examples(tmp_path_factory.mktemp("one_shard"), 6000, columns=10, task="binary",
                            num_shards=1, hidden_units=(16,))


@pytest.fixture(scope="module")
def distributed(one_shard, tmp_path_factory):
    """The same training on one device, mirrored over 2 logical CPUs, and 2 multi_worker processes."""
    binary = one_shard
    root = tmp_path_factory.mktemp("distributed")
    common = {"deterministic": True, "epochs": 2, "batch_size": 128, "clip_norm": 1.0, "early_stopping": {"patience": None}}
    results = {
        "one_device": launch(_request(binary, root, "one", strategy="one_device", **common), 1, root / "one" / "run"),
        "mirrored": launch(_request(binary, root, "mirrored", strategy="mirrored", cpu_replicas=2, **common), 1,
                           root / "mirrored" / "run"),
        "multi_worker": launch(_request(binary, root, "multi", strategy="multi_worker", **common), 2,
                               root / "multi" / "run"),
    }
    return root, results


def test_mirrored_and_multi_worker_match_one_device_on_the_same_global_batch(one_shard, distributed):
    binary = one_shard
    _, results = distributed
    assert results["mirrored"]["strategy"] == "MirroredStrategy" and results["mirrored"]["replicas"] == 2
    assert results["multi_worker"]["strategy"] == "CollectiveAllReduceStrategy"  # MultiWorkerMirroredStrategy
    assert results["multi_worker"]["replicas"] == 2 and results["multi_worker"]["workers"] == 2
    records = _eval_records(binary)
    reference = _predict(results["one_device"]["uri"], records)
    for name in ("mirrored", "multi_worker"):
        assert results[name]["steps"] == results["one_device"]["steps"]
        # Same global batch, loss averaged over it, gradients summed across replicas: same model.
        np.testing.assert_allclose(_predict(results[name]["uri"], records), reference, atol=2e-3, err_msg=name)
        assert results[name]["traces"]["train_steps"] == 1


def test_global_batch_can_scale_with_the_replicas(binary, tmp_path):
    request = _request(binary, tmp_path, "scaled", strategy="mirrored", cpu_replicas=2, batch_size_per_replica=32,
                       epochs=1, lr_scaling="linear", lr_schedule="constant", warmup_fraction=0.5)
    result = launch(request, 1, tmp_path / "run")
    assert result["replicas"] == 2
    assert result["steps"] == binary.counts["train"] // 64  # global batch 2 x 32
    rates = _scalars(Path(result["uri"]) / "tensorboard", "learning_rate")
    assert rates[0] < 0.002 and max(rates) == pytest.approx(0.02)  # warmed up to 0.01 x 2 replicas (a value per call)


def _scalars(board: Path, tag: str) -> list[float]:
    import tensorflow as tf

    return [float(tf.make_ndarray(value.tensor)) for path in sorted(board.glob("events.out.tfevents.*"))
            for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value
            if value.tag == tag]


def test_the_peak_learning_rate_follows_the_global_batch_by_the_named_rule():
    from tasks.training.optimization import peak_learning_rate

    grows = {"learning_rate": 0.01, "batch_size_per_replica": 32}
    assert peak_learning_rate(TrainConfig(**grows, lr_scaling="linear"), 32 * 16) == pytest.approx(0.16)
    assert peak_learning_rate(TrainConfig(**grows, lr_scaling="sqrt"), 32 * 16) == pytest.approx(0.04)
    assert peak_learning_rate(TrainConfig(**grows), 32 * 16) == 0.01  # none: as set
    assert peak_learning_rate(TrainConfig(learning_rate=0.01, lr_scaling="linear"), 512) == 0.01  # a fixed batch
    schedule = learning_rate_schedule(TrainConfig(**grows, lr_scaling="sqrt", warmup_fraction=0.1), 1000, 100, 128)
    assert float(schedule(99)) == pytest.approx(0.02) and float(schedule(49)) == pytest.approx(0.01)


def test_only_the_chief_writes(distributed):
    root, results = distributed
    ckpt = root / "multi" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "history.json", "latest"]
    assert not list((root / "multi" / "work").glob("worker-1/train-*"))  # its export scratch is gone
    assert (Path(results["multi_worker"]["uri"]) / "saved_model" / "saved_model.pb").is_file()
    logs = (root / "multi" / "run" / "worker-1.log").read_text()
    assert "epoch 2/2" not in logs  # progress is the chief's to report
    assert "epoch 2/2" in (root / "multi" / "run" / "worker-0.log").read_text()


def _checkpoint_steps(ckpt: Path) -> list[int]:
    """Steps of the committed checkpoints, as a resume sees them: the ones the `checkpoint` state
    file lists. A save killed between writing its files and recording them is not among them."""
    state = ckpt / "latest" / "checkpoint"
    if not state.is_file():
        return []
    return sorted({int(m) for m in re.findall(r'checkpoint_paths?: "[^"]*ckpt-(\d+)"', state.read_text())})


def _wait_for_checkpoint(ckpt: Path, at_least: int, thread: threading.Thread, outcome: dict,
                         timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise AssertionError(f"training ended before a checkpoint at step {at_least}: {outcome}")
        steps = _checkpoint_steps(ckpt)
        if steps and steps[-1] >= at_least:
            return steps[-1]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step >= {at_least} within {timeout} s")


def test_killed_training_resumes_from_its_last_checkpoint(binary, tmp_path):
    request = _request(binary, tmp_path, "killed", epochs=6, batch_size=32, checkpoint_every_steps=20,
                       steps_per_execution=4)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(_launch_catching(request, 1, tmp_path / "run")))
    thread.start()
    ckpt = Path(request["checkpoint_dir"])
    _wait_for_checkpoint(ckpt, 60, thread, outcome)
    worker = _worker_processes()[0]
    worker.send_signal(signal.SIGKILL)
    thread.join(60)
    assert isinstance(outcome.get("error"), WorkerFailed) and outcome["error"].exit_code == -signal.SIGKILL
    killed_at = _checkpoint_steps(ckpt)[-1]
    per_epoch = binary.counts["train"] // 32
    assert 60 <= killed_at < 6 * per_epoch

    result = launch(request, 1, tmp_path / "run")  # the retry
    assert result["resumed_from_step"] == killed_at
    assert result["steps"] == 6 * per_epoch and result["epochs"] == 6
    history = read_history(result["uri"])
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


def test_a_killed_worker_stops_the_others_and_the_retry_resumes(binary, tmp_path):
    request = _request(binary, tmp_path, "mw", strategy="multi_worker", epochs=4, batch_size=64,
                       checkpoint_every_steps=10, steps_per_execution=2)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(_launch_catching(request, 2, tmp_path / "run")))
    thread.start()
    ckpt = Path(request["checkpoint_dir"])
    _wait_for_checkpoint(ckpt, 20, thread, outcome)
    workers = _worker_processes()
    assert len(workers) == 2
    victim = next(w for w in workers if json.loads(w.environ()["TF_CONFIG"])["task"]["index"] == 1)
    victim.send_signal(signal.SIGKILL)
    thread.join(120)
    error = outcome.get("error")
    assert isinstance(error, WorkerFailed) and "worker 1 of 2" in str(error)
    assert not _worker_processes()  # the chief was stopped too
    killed_at = _checkpoint_steps(ckpt)[-1]

    result = launch(request, 2, tmp_path / "run")
    assert result["resumed_from_step"] == killed_at > 0
    assert result["steps"] == 4 * (binary.counts["train"] // 64)


def test_parameter_server_trains_as_well_as_one_device(one_shard, distributed, tmp_path):
    """A chief coordinating 2 workers and 1 parameter server, asynchronously, on the data of one device."""
    binary = one_shard
    root, results = distributed
    request = _request(binary, tmp_path, "ps", strategy="parameter_server", epochs=2, batch_size=128,
                       early_stopping={"patience": None}, checkpoint_every_steps=10)
    result = launch(request, 2, tmp_path / "run", parameter_servers=1)
    assert result["strategy"] == "ParameterServerStrategyV2"
    assert result["workers"] == 2 and result["steps"] == results["one_device"]["steps"]
    assert result["traces"] == {"train_steps": 1, "eval_step": 1}  # scheduled on every worker, traced once
    assert "worker_restarts" not in result
    reference = results["one_device"]["final_metrics"]["eval_accuracy"]
    assert result["final_metrics"]["eval_accuracy"] > reference - 0.03
    scores = _predict(result["uri"], _eval_records(binary))  # the chief's export, read back without the cluster
    assert scores.shape == (256, 2) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    # Only the chief ran the training loop and wrote: the workers and the parameter server served.
    assert sorted(p.name for p in Path(request["checkpoint_dir"]).iterdir()) == ["best", "history.json", "latest"]
    logs = {name: (tmp_path / "run" / f"{name}.log").read_text() for name in ("chief-0", "worker-0", "worker-1", "ps-0")}
    assert "epoch 2/2" in logs["chief-0"]
    for name in ("worker-0", "worker-1", "ps-0"):
        assert f"{name} serving at grpc://127.0.0.1:" in logs[name] and "epoch" not in logs[name]
    assert not _worker_processes()  # the servers were stopped when the chief finished


def test_parameter_server_survives_a_lost_worker_and_a_lost_chief_resumes(binary, tmp_path):
    request = _request(binary, tmp_path, "ps", strategy="parameter_server", epochs=3, batch_size=32,
                       checkpoint_every_steps=20, steps_per_execution=2)
    total = 3 * (binary.counts["train"] // 32)

    def kill(task_type: str, at_least: int) -> tuple[dict, int]:
        outcome: dict = {}
        thread = threading.Thread(
            target=lambda: outcome.update(_launch_catching(request, 2, tmp_path / "run", parameter_servers=1)))
        thread.start()
        step = _wait_for_checkpoint(Path(request["checkpoint_dir"]), at_least, thread, outcome)
        wanted = {"type": task_type, "index": 1 if task_type == "worker" else 0}
        (victim,) = [p for p in _worker_processes() if json.loads(p.environ()["TF_CONFIG"])["task"] == wanted]
        victim.send_signal(signal.SIGKILL)
        thread.join(180)
        assert not thread.is_alive()
        return outcome, step

    # A lost worker is started again; the coordinator re-runs its steps and training completes.
    outcome, _ = kill("worker", 20)
    result = outcome["result"]
    assert result["worker_restarts"] == {"worker-1": 1}
    assert result["steps"] == total and result["resumed_from_step"] == 0
    assert result["final_metrics"]["eval_accuracy"] > 0.75
    assert (tmp_path / "run" / "worker-1.log").read_text().count("worker-1 serving at") == 2

    # A lost chief stops the cluster; the retry resumes from its last checkpoint.
    for path in (Path(request["checkpoint_dir"]), Path(request["output_uri"])):
        shutil.rmtree(path)
    outcome, _ = kill("chief", 40)
    error = outcome.get("error")
    assert isinstance(error, WorkerFailed) and "chief-0 of the parameter-server cluster" in str(error)
    assert not _worker_processes()
    killed_at = _checkpoint_steps(Path(request["checkpoint_dir"]))[-1]
    result = launch(request, 2, tmp_path / "run", parameter_servers=1)
    assert result["resumed_from_step"] == killed_at >= 40
    assert result["steps"] == total and result["epochs"] == 3


@pytest.fixture
def s3_bucket(monkeypatch):
    from tasks import storage
    from tests.servers import moto_s3

    with moto_s3() as endpoint:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        storage.reset_clients()
        storage.s3_client().create_bucket(Bucket="runs")
        try:
            yield "s3://runs"
        finally:
            storage.reset_clients()


def test_a_checkpoint_push_runs_beside_training_and_its_failure_is_raised(tmp_path, s3_bucket):
    from tasks import storage
    from tasks.training.checkpoints import CheckpointMirror

    uri = f"{s3_bucket}/churn/runs/r0/checkpoints"
    local = tmp_path / "ckpt"
    (local / "latest").mkdir(parents=True)
    (local / "latest" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"')
    mirror = CheckpointMirror(local, uri)
    mirror.push_async()
    mirror.wait()
    assert storage.list_files(uri) == {"latest/checkpoint": 31} and mirror.uploaded == 1
    # The bucket goes away: the next push fails on its thread, and the failure is raised, not lost.
    client = storage.s3_client()
    for key in storage.list_files(uri):
        client.delete_object(Bucket="runs", Key=f"churn/runs/r0/checkpoints/{key}")
    client.delete_bucket(Bucket="runs")
    (local / "history.json").write_text("[]")
    mirror.push_async()
    with pytest.raises(Exception, match="NoSuchBucket|does not exist"):
        mirror.close()


def test_checkpoints_mirrored_to_s3_resume_on_another_machine(binary, tmp_path, s3_bucket):
    from tasks import storage
    from tasks.training.checkpoints import restore_checkpoints

    uri = f"{s3_bucket}/churn/runs/r1/checkpoints"
    params = {"epochs": 2, "batch_size": 64, "checkpoint_every_steps": 25, "early_stopping": {"patience": None}}
    first = _train(binary, tmp_path, "first", checkpoint_uri=uri, **params)
    local = tmp_path / "first" / "ckpt"
    mirrored = storage.list_files(uri)
    assert first.checkpoint_files_mirrored >= len(mirrored)
    # The copy is the local folder: the two newest checkpoints, the best weights, the history.
    assert mirrored == {p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    assert "latest/checkpoint" in mirrored and "history.json" in mirrored and "best/weights.index" in mirrored
    assert len([k for k in mirrored if k.startswith("latest/ckpt-") and k.endswith(".index")]) == 2

    # Another machine: nothing local. The copy is restored, and the retry resumes where the first try ended.
    elsewhere = tmp_path / "elsewhere" / "ckpt"
    assert restore_checkpoints(elsewhere, uri) == len(mirrored)
    assert restore_checkpoints(elsewhere, uri) == 0  # local checkpoints win over the copy
    # Workers restoring into one shared folder at once: one copy lands whole, the others step aside.
    shared = tmp_path / "shared" / "ckpt"
    counts = run_concurrently(lambda _: restore_checkpoints(shared, uri), 3)
    assert sorted(counts) == [0, 0, len(mirrored)]
    assert {p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file()} == set(mirrored)
    assert [p.name for p in shared.parent.iterdir()] == ["ckpt"]  # no staging folder left
    config = TrainConfig(**{**params, "epochs": 3, "learning_rate": 0.01})
    result = train_model(binary.uri, binary.spec, config, str(tmp_path / "elsewhere" / "model"), elsewhere,
                         tmp_path / "cache", tmp_path / "elsewhere" / "work", checkpoint_uri=uri)
    assert result.resumed_from_step == first.steps > 0
    assert result.epochs == 3 and [h["epoch"] for h in read_history(result.uri)] == [1, 2, 3]
    assert storage.list_files(uri)["latest/checkpoint"] == (elsewhere / "latest" / "checkpoint").stat().st_size

    # Pods on fresh disks: each multi_worker worker restores the copy before training, and they resume together.
    request = _request(binary, tmp_path, "pods", strategy="multi_worker", **{**params, "epochs": 4})
    result = launch({**request, "checkpoint_uri": uri}, 2, tmp_path / "pods" / "run")
    assert result["resumed_from_step"] == 3 * first.steps // 2 and result["epochs"] == 4


def _launch_catching(request, workers, run_dir, **kwargs):
    try:
        return {"result": launch(request, workers, run_dir, **kwargs)}
    except Exception as error:  # noqa: BLE001 - the test inspects it
        return {"error": error}


def _worker_processes():
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if "tasks.training.launcher" in " ".join(p.cmdline())]


def test_a_failing_worker_reports_its_log(binary, tmp_path):
    request = _request(binary, tmp_path, "broken")
    request["examples_uri"] = str(tmp_path / "nowhere")
    with pytest.raises(WorkerFailed, match=r"(?s)worker 0 of 1 exited with status 1.*nowhere"):
        launch(request, 1, tmp_path / "run")


def test_core_sets_are_disjoint():
    assert core_sets(2, cpus=4) == [[0, 1], [2, 3]]
    assert core_sets(3, cpus=2) == [[], [], []]


def test_batched_progress_logs_every_step_in_few_requests(tmp_path):
    from mlflow import MlflowClient

    from tasks.tracking import BatchedProgress, MlflowTracker

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("progress", artifact_location=str(tmp_path / "a")))
    progress = BatchedProgress(MlflowTracker(client, run.info.run_id), flush_seconds=3600)
    for execution in range(50):
        progress.on_steps(execution * 8 + 1, [1.0 / (execution * 8 + i + 1) for i in range(8)], 0.01)
    progress.on_epoch(1, {"epoch": 1, "loss": 0.5, "eval_loss": 0.6, "seconds": 2.0, "eval_accuracy": 0.8})
    assert progress.requests == 1 and progress.points == 400 + 50 + 4
    history = client.get_metric_history(run.info.run_id, "step_loss")
    assert sorted(m.step for m in history) == list(range(1, 401))
    assert math.isclose(min(history, key=lambda m: m.step).value, 1.0)
    assert client.get_run(run.info.run_id).data.metrics["eval_accuracy"] == 0.8


def test_training_refuses_a_batch_larger_than_the_train_split(binary, tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch of 65536"):
        _train(binary, tmp_path, batch_size=65536)


def test_cpu_split_needs_a_fresh_process(binary, tmp_path):
    from tasks.training.distribution import DevicesAlreadyInitialized

    import tensorflow as tf

    tf.constant(1.0) + 1  # TensorFlow has run in this process
    with pytest.raises(DevicesAlreadyInitialized, match="cpu_replicas=2"):
        _train(binary, tmp_path, strategy="mirrored", cpu_replicas=2)


def test_parameter_server_needs_a_cluster_with_ps_tasks(binary, tmp_path):
    with pytest.raises(ValueError, match="chief of a cluster with ps tasks"):
        _train(binary, tmp_path, strategy="parameter_server")


def test_workers_are_not_left_running(binary):
    assert os.environ.get("TF_CONFIG") is None
    assert not _worker_processes()


def test_model_spec_comes_from_schema_and_statistics(trained):
    spec = read_model_spec(trained["model"].uri)
    features = {f.name: f for f in spec.features}
    assert spec.label_vocabulary == ("Adelie", "Chinstrap", "Gentoo")
    assert features["island"].vocabulary == ("Biscoe", "Dream", "Torgersen")
    assert 40 < features["bill_length_mm"].mean < 47 and features["bill_length_mm"].std > 1
    assert features["year"].kind == "int"



def test_training_learns_and_checkpoints_every_epoch(trained):
    epochs = trained["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert epochs[-1]["eval_accuracy"] > 0.8
    assert trained["model"].strategy == "OneDeviceStrategy"
    assert (trained["root"] / "ckpt" / "latest" / "checkpoint").is_file()
    per_epoch = trained["examples"].counts["train"] // 32
    assert [s[0] for s in trained["steps"]] == list(range(1, 4 * per_epoch + 1))
    assert trained["model"].steps == 4 * per_epoch



def test_retry_resumes_from_last_checkpoint(trained):
    root = trained["root"]
    config = trained["config"]
    more = config.train.model_copy(update={"epochs": 6})
    spec = read_model_spec(trained["model"].uri)
    resumed = train_model(trained["examples"].uri, spec, more, str(root / "model_resumed"), root / "ckpt",
                          trained["cache"], trained["work"])
    per_epoch = trained["examples"].counts["train"] // 32
    assert resumed.resumed_from_step == 4 * per_epoch
    assert resumed.steps == 6 * per_epoch
    assert resumed.epochs == 6



def test_saved_model_serves_examples_and_raw_features(trained):
    import tensorflow as tf

    loaded = tf.saved_model.load(trained["model"].saved_model_uri)
    assert set(loaded.signatures) == {SERVING_SIGNATURE, FEATURES_SIGNATURE}
    example = tf.train.Example()
    for key, value in {"island": b"Biscoe", "sex": b"male"}.items():
        example.features.feature[key].bytes_list.value.append(value)
    for key, value in {"bill_length_mm": 50.0, "bill_depth_mm": 15.0}.items():
        example.features.feature[key].float_list.value.append(value)
    for key, value in {"flipper_length_mm": 220, "body_mass_g": 5400, "year": 2008}.items():
        example.features.feature[key].int64_list.value.append(value)  # whole numbers in the CSV: INT
    by_example = loaded.signatures[SERVING_SIGNATURE](examples=tf.constant([example.SerializeToString()]))
    by_features = loaded.signatures[FEATURES_SIGNATURE](
        island=tf.constant(["Biscoe"]), sex=tf.constant(["male"]), bill_length_mm=tf.constant([50.0]),
        bill_depth_mm=tf.constant([15.0]), flipper_length_mm=tf.constant([220], tf.int64),
        body_mass_g=tf.constant([5400], tf.int64), year=tf.constant([2008], tf.int64))
    assert by_example["predicted_class"].numpy()[0] == b"Gentoo"
    np.testing.assert_allclose(by_example["scores"].numpy(), by_features["scores"].numpy(), rtol=1e-5)
    assert by_example["classes"].numpy()[0].tolist() == [b"Adelie", b"Chinstrap", b"Gentoo"]


def test_a_saved_model_is_loaded_once_per_process_until_it_changes(trained, tmp_path):
    """Evaluate and optimize in one process (tfpipe run) share the trained model's load; a
    SavedModel whose files changed at the same path (its weights rewritten) is loaded again."""
    from tasks.training.export import load_saved_model

    copy = tmp_path / "saved_model"
    shutil.copytree(trained["model"].saved_model(trained["cache"]), copy)
    first = load_saved_model(copy)
    assert load_saved_model(copy) is first and set(first.signatures) >= {SERVING_SIGNATURE, FEATURES_SIGNATURE}
    data = next((copy / "variables").glob("variables.data-*"))
    stamp = data.stat().st_mtime_ns
    data.write_bytes(data.read_bytes())  # rewritten in place, same size
    os.utime(data, ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))
    assert load_saved_model(copy) is not first


def test_xla_compiles_the_model_after_its_lookups_and_trains_as_without(binary, tmp_path):
    import tensorflow as tf

    from tasks.training.model import build_model, split_at_lookups

    model = build_model(binary.spec, seed=1)
    encoder, core = split_at_lookups(model)
    assert {type(layer).__name__ for layer in encoder.layers} == {"InputLayer", "StringLookup"}
    assert [v.ref() for v in core.trainable_variables] == [v.ref() for v in model.trainable_variables]
    rng = np.random.default_rng(0)
    features = {f.name: tf.constant(rng.choice([*f.vocabulary, "unseen"], (64, 1)) if f.categorical
                                    else rng.normal(f.mean, f.std, (64, 1)).astype("float32"))
                for f in binary.spec.features}
    assert any(f.categorical for f in binary.spec.features)
    assert np.allclose(core(encoder(features)).numpy(), model(features).numpy())

    plain = _train(binary, tmp_path, name="plain", epochs=2, jit_compile="off")
    compiled = _train(binary, tmp_path, name="xla", epochs=2, jit_compile="on")
    assert compiled.jit_compile and not plain.jit_compile
    assert compiled.traces == {"train_steps": 1, "eval_step": 1}
    assert compiled.final_metrics["eval_loss"] == pytest.approx(plain.final_metrics["eval_loss"], rel=0.02)
    assert np.allclose(_predict(compiled.uri, _eval_records(binary, 32)), _predict(plain.uri, _eval_records(binary, 32)),
                       atol=0.02)


def test_profiled_steps_leave_a_trace_of_the_step_function_and_its_input(binary, tmp_path, capsys):
    from tasks.cli import main
    from tasks.training.profile import find_traces, summarize

    result = _train(binary, tmp_path, epochs=1, steps_per_execution=2, profile_steps=(2, 4))
    traces = find_traces(Path(result.uri) / "tensorboard")
    assert len(traces) == 1 and "plugins/profile" in str(traces[0])
    summary = summarize(traces[0])
    # Steps 2 to 4 exactly: calls cut at the range's ends (steps 2-3, then 4), each marked as a step.
    assert summary.steps == 2
    ops = {op for op, _, _ in summary.ops}
    # Forward (MatMul, or oneDNN's _FusedMatMul, _MklMatMul, _MklNativeFusedMatMul by CPU), backward, update.
    assert any("MatMul" in op for op in ops) and {"ReluGrad", "AssignSubVariableOp"} <= ops
    assert 0 < summary.input_seconds < summary.step_seconds  # the batches it waited for, inside the steps
    assert main(["trace", str(Path(result.uri)), "--json", "--top", "3"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 2 and len(printed["top_ops"]) == 3
    assert 0 < printed["input_bound_share"] < 1
    assert main(["trace", "runs:/../../etc"]) == 2
    assert main(["trace", str(tmp_path / "nothing")]) == 1
    # TensorBoard's profile plugin (a dependency) finds the trace and makes its overview from it.
    with tensorboard(Path(result.uri) / "tensorboard") as url:
        def get(path: str):
            with urllib.request.urlopen(url + path, timeout=60) as response:
                body = response.read()
            return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)

        assert get("/data/plugins_listing")["profile"]["enabled"]
        (run,) = get("/data/plugin/profile/runs")
        assert traces[0].parent.name == run
        assert "overview_page^" in get(f"/data/plugin/profile/run_tools?run={run}")
        (host,) = get(f"/data/plugin/profile/hosts?run={run}&tag=overview_page%5E")
        overview = get(f"/data/plugin/profile/data?run={run}&tag=overview_page%5E&host={host}")
        assert overview[0]["p"]["host_tf_op_percent"] == "100.0%"  # the ops ran on this host's CPU
