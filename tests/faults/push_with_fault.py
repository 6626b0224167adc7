"""Run one push step in this process, killed (SIGKILL) at a chosen call: what a crashed worker does.

    python -m tests.faults.push_with_fault INPUTS.json [KILL_AT]

``INPUTS.json`` holds the pipeline file, the run id, the settings and the step's inputs.
``KILL_AT`` names where the process kills itself:

* ``upload:<n>``: when the n-th file copy into the store starts; ``upload:<n>:mid``: half-way
  through writing it (a local store: half the bytes are on disk);
* ``swap``, ``commit``, ``config``, ``register``, ``alias``, ``retention``: when the champion
  pointer's compare-and-swap, the commit of the promotion, the rewrite of ``models.config``,
  the MLflow registration, the move of the registry alias or retention starts;
* ``swap:mid``, ``config:mid``: a local store, when the new ``champion.json`` or
  ``models.config`` is written under its temporary name and not yet renamed into place.

Without ``KILL_AT`` the push runs to its end.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(target, attribute: str, when) -> None:
    """Call ``when()`` before each call of ``target.attribute``."""
    real = getattr(target, attribute)

    def armed(*args, **kwargs):
        when(*args)
        return real(*args, **kwargs)

    setattr(target, attribute, armed)


def _nth(n: int, action):
    count = {"n": 0}

    def when(*_args):
        count["n"] += 1
        if count["n"] == n:
            action()

    return when


def _half_written_copy(storage) -> None:
    """From now on, a local copy writes half the file, then the process dies."""
    import shutil
    import types

    def half_then_die(source, target, *args, **kwargs):
        data = Path(source).read_bytes()
        with open(target, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        _die()

    functions = {k: getattr(shutil, k) for k in dir(shutil) if not k.startswith("__")}
    storage.shutil = types.SimpleNamespace(**{**functions, "copyfile": half_then_die})


def _die_before_rename(file_name: str) -> None:
    """The process dies when a file named ``file_name`` is about to be renamed into place."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == file_name:
            _die()
        return real(src, dst, *args, **kwargs)

    os.replace = replace


def arm(point: str | None) -> None:
    """Set the kill point (see the module's docstring)."""
    if not point:
        return
    from mlflow import MlflowClient

    from tasks import storage

    from tasks.release import model_store, models_config

    parts = point.split(":")
    name, mid = parts[0], parts[-1] == "mid"
    if name == "upload":
        _arm(storage, "upload_verified", _nth(int(parts[1]), (lambda: _half_written_copy(storage)) if mid else _die))
    elif mid:
        target = {"swap": model_store.CHAMPION_FILE, "config": model_store.MODELS_CONFIG}[name]
        _arm(*{"swap": (model_store, "set_champion"), "config": (models_config, "write_models_config")}[name],
             _nth(1, lambda: _die_before_rename(target)))
    else:
        target, attribute = {
            "swap": (model_store, "set_champion"), "commit": (model_store, "commit_promotion"),
            "config": (models_config, "write_models_config"), "retention": (model_store, "apply_retention"),
            "register": (MlflowClient, "create_model_version"), "alias": (MlflowClient, "set_registered_model_alias"),
        }[name]
        _arm(target, attribute, _nth(1, _die))


def main(argv: list[str]) -> int:
    inputs = json.loads(Path(argv[1]).read_text())
    os.environ.update(inputs.get("process_env") or {})
    arm(argv[2] if len(argv) > 2 else None)
    from tasks.context import make_context
    from tasks.release_steps import push_model
    from tasks.settings import Settings

    settings = Settings.from_env(inputs["env"])
    ctx = make_context(inputs["pipeline"], run_id=inputs["run_id"], settings=settings,
                       overrides=inputs.get("overrides") or {})
    record = push_model(ctx, inputs["examples"], inputs["model"], inputs["blessing"], inputs.get("optimized"))
    print(json.dumps({"version": record.get("version"), "champion": record.get("champion")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
