"""What serving needs from a pushed model, and the checks that it serves.

* **Warm-up requests** (``assets.extra/tf_serving_warmup_requests``): a TFRecord file of
  ``PredictionLog`` records that TensorFlow Serving replays when it loads a version, so the
  first real request does not pay for lazy initialization. Built from eval examples.
* **Infra check** (:func:`check_pushed_model`): the version is loaded back *from the store*
  (downloaded when the store is on S3) and must answer its ``serving_default`` signature on the
  warm-up requests with the predictions the model gave before the push.
* **TensorFlow Serving check** (:func:`check_tf_serving`): when a server is configured, wait until
  it reports the version AVAILABLE, then query it over REST with the same requests.
* **Serving check** (:func:`check_serving`, the ``serving_check`` DAG after every push): what
  serves a model now, end to end: champion, ``models.config``, the files against their
  manifest, answers to the warm-up requests, and TensorFlow Serving.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from tasks import storage
from tasks.artifacts import SERVING_SIGNATURE, WARMUP_FILE

INPUT_KEY = "examples"
# Outputs are float32 computed by the same graph; a reload may change the kernels chosen.
TOLERANCE = 1e-5


class ServingCheckError(RuntimeError):
    """A pushed version does not serve as it should; the message says how."""


def write_warmup_requests(path: Path, model_name: str, records: list[bytes]) -> int:
    """One ``PredictionLog`` per serialized example (batch of one, as a live request)."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE),
                inputs={INPUT_KEY: tf.make_tensor_proto([record], dtype=tf.string)},
            )
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(records)


def read_warmup_requests(path: Path) -> list[bytes]:
    """The serialized examples of a warm-up file, in order (what TensorFlow Serving replays)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records: list[bytes] = []
    for raw in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        request = log.predict_log.request
        if request.model_spec.signature_name != SERVING_SIGNATURE or INPUT_KEY not in request.inputs:
            raise ServingCheckError(f"{path}: a warm-up request is not a {SERVING_SIGNATURE} request on {INPUT_KEY!r}")
        records.extend(tf.make_ndarray(request.inputs[INPUT_KEY]).tolist())
    return records


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, Any], where: str) -> float:
    """Raise unless ``actual`` holds every expected output with the same values; returns the
    largest absolute difference of the numeric outputs."""
    worst = 0.0
    for key, want in expected.items():
        if key not in actual:
            raise ServingCheckError(f"{where}: output {key!r} is missing (got {sorted(actual)})")
        got = np.asarray(actual[key])
        want = np.asarray(want)
        if want.dtype.kind in "OSU":
            if not np.array_equal(_as_text(want), _as_text(got)):
                raise ServingCheckError(f"{where}: output {key!r} differs from the predictions before the push")
            continue
        if got.shape != want.shape:
            raise ServingCheckError(f"{where}: output {key!r} has shape {got.shape}, expected {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        if diff > TOLERANCE:
            raise ServingCheckError(f"{where}: output {key!r} differs by {diff:.3g} from the predictions before the push")
        worst = max(worst, diff)
    return worst


def _as_text(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "OS":
        return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[str])(values)
    return values.astype(str)


def check_pushed_model(version_uri: str, expected: dict[str, np.ndarray], cache_dir: Path) -> dict[str, Any]:
    """Load the pushed version from the store and replay its warm-up requests.

    Args:
        expected: The outputs of the model before the push on those same requests.

    Raises:
        ServingCheckError: It does not load, has no warm-up requests, or answers differently.
    """
    from tasks.evaluate import predict

    started = time.perf_counter()
    local = storage.materialize(version_uri, cache_dir)
    warmup = local / WARMUP_FILE
    if not warmup.is_file():
        raise ServingCheckError(f"{version_uri} has no {WARMUP_FILE}")
    records = read_warmup_requests(warmup)
    try:
        outputs = predict(local, records, batch_size=max(1, len(records)))
    except Exception as error:  # noqa: BLE001 - whatever loading raises, the version does not serve
        raise ServingCheckError(f"{version_uri} does not load or answer {SERVING_SIGNATURE}: {error}") from error
    worst = compare_outputs(expected, outputs, version_uri)
    return {"version_uri": version_uri, "requests": len(records), "max_abs_diff": worst, "passed": True,
            "seconds": time.perf_counter() - started}


def _http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def version_state(url: str, model_name: str, version: int) -> tuple[str, str]:
    """TensorFlow Serving's state of a version (``AVAILABLE``, ``LOADING``, ..., or ``UNKNOWN``
    when the server does not know it yet) and its error message."""
    try:
        status = _http_json(f"{url.rstrip('/')}/v1/models/{model_name}/versions/{version}", timeout=10)
    except urllib.error.HTTPError as error:
        return "UNKNOWN", error.read().decode(errors="replace")[:500]
    except OSError as error:
        return "UNREACHABLE", str(error)
    for entry in status.get("model_version_status", []):
        if str(entry.get("version")) == str(version):
            return entry.get("state", "UNKNOWN"), entry.get("status", {}).get("error_message", "")
    return "UNKNOWN", ""


def check_tf_serving(url: str, model_name: str, version: int, records: list[bytes],
                     expected: dict[str, np.ndarray], timeout: float, poll: float = 1.0) -> dict[str, Any]:
    """Wait for TensorFlow Serving to report ``version`` AVAILABLE, then predict over REST.

    Raises:
        ServingCheckError: Not AVAILABLE within ``timeout`` seconds (with the last state and the
            server's error), or its answers differ from ``expected``.
    """
    started = time.monotonic()
    state, message = "UNKNOWN", ""
    while time.monotonic() - started < timeout:
        state, message = version_state(url, model_name, version)
        if state == "AVAILABLE":
            break
        if state == "END" and message:
            break  # it failed to load: waiting longer will not help
        time.sleep(poll)
    if state != "AVAILABLE":
        raise ServingCheckError(
            f"TensorFlow Serving at {url} did not make {model_name} v{version} AVAILABLE within {timeout:.0f}s "
            f"(last state {state}{': ' + message if message else ''}); for an S3 store, is `tfpipe serving-sync` "
            "running beside the server?"
        )
    waited = time.monotonic() - started
    body = {"signature_name": SERVING_SIGNATURE,
            "inputs": {INPUT_KEY: [{"b64": base64.b64encode(r).decode()} for r in records]}}
    try:
        answer = _http_json(f"{url.rstrip('/')}/v1/models/{model_name}/versions/{version}:predict", body)
    except urllib.error.HTTPError as error:
        raise ServingCheckError(f"TensorFlow Serving at {url} refused the predict request: "
                                f"{error.code} {error.read().decode(errors='replace')[:500]}") from None
    outputs = answer.get("outputs", {})
    worst = compare_outputs(expected, {k: np.asarray(v) for k, v in outputs.items()}, f"{url} {model_name} v{version}")
    return {"url": url, "version": version, "state": state, "waited_seconds": waited, "requests": len(records),
            "max_abs_diff": worst, "passed": True}


def verify_version(model_store: str, model_name: str, version: int, cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Download (or open) a stored version and check every file against its manifest.

    Returns:
        The local copy and ``{"files": n, "bytes": total}``.

    Raises:
        ServingCheckError: A file is missing or differs in size or SHA-256.
    """
    from tasks import artifacts
    from tasks.release import model_store as store

    uri = artifacts.model_version_uri(model_store, model_name, version)
    manifest = store.read_manifest(uri)
    local = storage.materialize(uri, cache_dir)
    problems = store.manifest_mismatches(local, manifest)
    if problems:
        raise ServingCheckError(f"{uri}: {'; '.join(problems)}")
    return local, {"files": len(manifest["files"]), "bytes": sum(e["size"] for e in manifest["files"].values())}


def _sane(outputs: dict[str, np.ndarray], where: str) -> None:
    for key, value in outputs.items():
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ServingCheckError(f"{where}: output {key!r} holds NaN or infinity")
    if "scores" in outputs and outputs["scores"].ndim == 2:
        sums = outputs["scores"].sum(axis=1)
        if not np.allclose(sums, 1.0, atol=1e-3):
            raise ServingCheckError(f"{where}: class scores do not sum to 1 (e.g. {sums[0]:.4f})")


def check_serving(model_store: str, model_name: str, cache_dir: Path, serving_url: str | None = None,
                  timeout: float = 300.0) -> dict[str, Any]:
    """What serves ``model_name`` now: its champion, the store's ``models.config`` naming it, every
    file of the version matching its manifest, its warm-up requests answered with finite scores
    (class scores summing to 1), and with ``serving_url`` TensorFlow Serving giving the same answers.

    Raises:
        ServingCheckError: Any of these does not hold; the message says which.
    """
    from tasks.release import model_store as store, models_config
    from tasks.evaluate import predict

    started = time.perf_counter()
    current = store.champion(model_store, model_name)
    if current is None:
        raise ServingCheckError(f"{model_name} has no champion in {model_store}: nothing is served")
    version, uri = current
    config_uri = storage.join(model_store, store.MODELS_CONFIG)
    if not storage.exists(config_uri):
        raise ServingCheckError(f"{config_uri} does not exist: TensorFlow Serving has no config to load")
    served = models_config.parse_models_config(storage.read_bytes(config_uri).decode()).get(model_name)
    if served is None or served[1] != [version]:
        raise ServingCheckError(f"{config_uri} serves {model_name} {served[1] if served else 'not at all'}, "
                                f"but the champion is v{version}")
    local, integrity = verify_version(model_store, model_name, version, cache_dir)
    records = read_warmup_requests(local / WARMUP_FILE)
    outputs = predict(local, records, batch_size=max(1, len(records)))
    _sane(outputs, uri)
    report: dict[str, Any] = {"model_name": model_name, "version": version, "uri": uri, "models_config": config_uri,
                              "requests": len(records), **integrity}
    if serving_url:
        report["tf_serving"] = check_tf_serving(serving_url, model_name, version, records, outputs, timeout)
    report["seconds"] = time.perf_counter() - started
    return report
