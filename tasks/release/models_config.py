"""TensorFlow Serving's ``models.config``: the champion of every model in a store, written from the
champion pointers (:mod:`tasks.release.model_store`), and read back by the checks and the sync."""

from __future__ import annotations

from tasks import storage
from tasks.artifacts import MODELS_CONFIG
from tasks.release.model_store import champion, models


def serving_base_path(model_store: str, override: str | None = None) -> str:
    """Where TensorFlow Serving finds the store: ``override``; a local store's own path; else
    ``/models`` (the conventional mount of a store synced by ``tfpipe serving-sync``)."""
    if override:
        return override.rstrip("/")
    if storage.is_s3(model_store):
        return "/models"
    return str(storage.local_path(model_store).resolve())



def render_models_config(champions: dict[str, int], base_path: str) -> str:
    """TensorFlow Serving's ``ModelServerConfig`` (text format) serving each model's champion."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name, version in sorted(champions.items()):
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = f"{base_path.rstrip('/')}/{name}"
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.append(int(version))
    return "# Written by tfpipe: each model's champion. Edits are overwritten.\n" + text_format.MessageToString(config)



def parse_models_config(text: str) -> dict[str, tuple[str, list[int]]]:
    """``models.config`` text to ``{model: (base_path, versions)}``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return {c.name: (c.base_path, list(c.model_version_policy.specific.versions))
            for c in config.model_config_list.config}



def champions(model_store: str) -> dict[str, int]:
    """Every model of the store that has a champion, to its champion version."""
    found = {}
    for name in models(model_store):
        current = champion(model_store, name)
        if current is not None:
            found[name] = current[0]
    return found



def write_models_config(model_store: str, base_path: str | None = None) -> str:
    """Rewrite ``<store>/models.config`` from the champion pointers; returns its URI.

    The pointers are read inside the update (a lock locally, a conditional write on S3), so two
    writers (pushes of two models, a push and a rollback) cannot leave the config behind a
    pointer: whoever writes last read every pointer after the other had written its own.
    """
    uri = storage.join(model_store, MODELS_CONFIG)
    base = serving_base_path(model_store, base_path)

    def render(current: bytes | None) -> bytes | None:
        text = render_models_config(champions(model_store), base).encode()
        return None if text == current else text

    storage.update_bytes(uri, render)
    return uri
