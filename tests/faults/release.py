"""What the fault suite does to a release and what it checks afterwards (docs/release.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tasks import storage

from tasks.release import model_store, models_config, serving
from tasks.config import GateConfig, MetricGate
from tasks.evaluate import evaluate_model
from tasks.context import make_context
from tasks.release_steps import push_model
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "tfpipe-faults"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_MAX_ATTEMPTS": "2"}


def make_world(services, kind: str, model: dict, tracking_uri: str | None = None) -> dict:
    """Settings for a local (``kind="local"``) or an S3 store, and MLflow at ``tracking_uri``
    (default: the suite's server)."""
    root = services["root"]
    store = str(root / "store") if kind == "local" else f"s3://{BUCKET}/store"
    env = {"TFPIPE_HOME": str(root / "home"), "TFPIPE_ARTIFACT_ROOT": str(root / "artifacts"),
           "TFPIPE_MODEL_STORE": store, "MLFLOW_TRACKING_URI": tracking_uri or services["tracking_uri"]}
    return {**services, "env": env, "settings": Settings.from_env(env), "model": model,
            "process_env": {**AWS, "AWS_ENDPOINT_URL": services["endpoint"]}}


def bless(trained, world, name: str, run_id: str) -> dict:
    """Evaluated against what serves now, as the run's evaluate step does."""
    store = world["settings"].model_store
    state = model_store.champion_state(store, name)
    return evaluate_model(trained["model"].uri, trained["examples"].uri,
                          GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}),
                          model_store.champion(store, name), str(world["root"] / "evaluations" / name / run_id),
                          trained["cache"], trained["work"], champion_generation=state[1] if state else None).to_dict()


def push(trained, world, name: str, run_id: str, blessing: dict, **overrides) -> dict:
    ctx = make_context(world["pipeline"], run_id=run_id, settings=world["settings"],
                       overrides={"model_name": name, **overrides})
    return push_model(ctx, trained["examples"].to_dict(), world["model"], blessing)


def push_process(trained, world, name: str, run_id: str, blessing: dict, tmp_path: Path, point: str | None = None,
                 **overrides) -> subprocess.Popen:
    """The push step of ``run_id`` in a process of its own (``tests/faults/push_with_fault.py``),
    killed at ``point`` if given; stdout and stderr are piped."""
    inputs = tmp_path / f"{name}-{run_id}.json"
    inputs.write_text(json.dumps({
        "pipeline": str(world["pipeline"]), "run_id": run_id, "env": world["env"],
        "process_env": world["process_env"], "overrides": {"model_name": name, **overrides},
        "examples": trained["examples"].to_dict(), "model": world["model"], "blessing": blessing}))
    command = [sys.executable, "-m", "tests.faults.push_with_fault", str(inputs), *([point] if point else [])]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def push_killed(trained, world, name: str, run_id: str, blessing: dict, point: str, tmp_path: Path) -> int:
    process = push_process(trained, world, name, run_id, blessing, tmp_path, point)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == -9, f"the push was not killed at {point}: rc {process.returncode}\n{stderr[-3000:]}"
    return process.returncode


def serving_state(world, name: str) -> dict:
    """What each of the three says serves: the pointer (and whether it is pending), models.config,
    the registry alias."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    store = world["settings"].model_store
    pointer = model_store.read_champion(store, name)
    config_uri = storage.join(store, model_store.MODELS_CONFIG)
    config = models_config.parse_models_config(storage.read_bytes(config_uri).decode()) if storage.exists(
        config_uri) else {}
    try:
        alias = int(MlflowClient(world["env"]["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(name, "champion")
                    .tags["store_version"])
    except MlflowException:
        alias = None
    return {"pointer": pointer["version"] if pointer else None, "pending": bool(pointer and "pending_until" in pointer),
            "generation": pointer.get("generation") if pointer else None,
            "config": config.get(name, (None, [None]))[1][0], "alias": alias}


def assert_intact(world, name: str, version: int, tmp_path: Path) -> None:
    """Invariant 1: every file matches the manifest and the version loads and answers its warm-up requests."""
    local, _ = serving.verify_version(world["settings"].model_store, name, version, tmp_path / "verify")
    assert (local / model_store.SAVED_MODEL_PB).is_file()


def assert_safe_after_crash(world, name: str, owner: str, before: dict, tmp_path: Path) -> dict:
    """Right after the kill: TF Serving serves an intact version, the one before the push, or (its
    promotion pending, owned by the dead push) the new one; the pointer is either settled and
    agrees with models.config, or pending for the killed push."""
    now = serving_state(world, name)
    assert_intact(world, name, now["config"], tmp_path)
    if now["pending"]:
        assert model_store.read_champion(world["settings"].model_store, name)["by"] == owner
    else:  # settled: before the swap, or after the commit
        assert now["pointer"] == now["config"] == now["alias"] in (before["config"], before["config"] + 1)
    return now


def seed(trained, world, name: str) -> dict:
    push(trained, world, name, "seed", bless(trained, world, name, "seed"))
    served = serving_state(world, name)
    assert served["pointer"] == served["config"] == served["alias"] == 1 and not served["pending"]
    return served


def claims(world, name: str) -> list[str]:
    root = storage.join(world["settings"].model_store, name, model_store.CLAIMS)
    return sorted(storage.list_dir(root))
