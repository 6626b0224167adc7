"""push_model: copy a blessed SavedModel into the model store (see :mod:`tasks.release.model_store`).

* The version number is claimed before any file is written, so two pushes never share one.
* Every file is uploaded and verified (size and SHA-256; on S3 also checked by S3 on receipt),
  then ``tfpipe_manifest.json`` (every file's size and SHA-256), then ``saved_model.pb`` last:
  TensorFlow Serving treats its presence as "this version is ready", so it never loads a
  half-copied model, and nothing else counts a version as complete before it is there.
* With the SavedModel go TF Serving's warm-up requests (``assets.extra/``) and the optimized
  variants that were kept (``variants/``).
* A push that fails part-way removes what it wrote (the claimed number stays used) and raises.
  Its retry (the same owner, a DAG run) finds its claim and finishes the same version: a
  version already pushed completely with the same files is kept, a partial one is written again.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.artifacts import MANIFEST_FILE, SAVED_MODEL_PB, VARIANTS_DIR, WARMUP_FILE, Blessing
from tasks.release.model_store import claim_version, now

log = logging.getLogger(__name__)


class PushError(RuntimeError):
    """The model was not pushed; the message says why."""


@dataclass(frozen=True)
class PushedModel:
    uri: str
    model_name: str
    version: int
    files: int
    bytes: int
    warmup_requests: int = 0
    variants: tuple[str, ...] = ()
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["variants"] = list(self.variants)
        return data


def _stage_extras(scratch: Path, model_name: str, warmup_records: list[bytes],
                  variant_files: list[Path]) -> dict[str, Path]:
    """Files pushed beside the SavedModel's own, by their path in the version."""
    extras: dict[str, Path] = {}
    if warmup_records:
        from tasks.release.serving import write_warmup_requests

        write_warmup_requests(scratch / WARMUP_FILE, model_name, warmup_records)
        extras[WARMUP_FILE] = scratch / WARMUP_FILE
    for path in variant_files:
        if path.is_dir():  # a SavedModel variant (pruned, TF-TRT)
            extras.update({f"{VARIANTS_DIR}/{path.name}/{f.relative_to(path).as_posix()}": f
                           for f in sorted(path.rglob("*")) if f.is_file()})
        else:
            extras[f"{VARIANTS_DIR}/{path.name}"] = path
    return extras


def push_model(
    saved_model_dir: Path,
    blessing: Blessing,
    model_store: str,
    model_name: str,
    owner: str,
    warmup_records: list[bytes] | None = None,
    variant_files: list[Path] | None = None,
    work_dir: Path | None = None,
    weights_sha256: str | None = None,
) -> PushedModel:
    """Push a local SavedModel directory after re-checking its blessing.

    Args:
        warmup_records: Serialized examples written as TF Serving warm-up requests.
        variant_files: Optimized variants (files, or SavedModel directories) to publish with the
            model under ``variants/``.
        weights_sha256: The model's :func:`weights_digest`, recorded in the manifest.

    Raises:
        PushError: The blessing is negative, the directory is no SavedModel, or the copy failed
            or could not be verified (what was written of the version is removed).
    """
    if not blessing.blessed:
        raise PushError(f"refusing to push {blessing.model_uri}: it is not blessed ({'; '.join(blessing.failed_reasons)})")
    if not (saved_model_dir / SAVED_MODEL_PB).is_file():
        raise PushError(f"{saved_model_dir} is not a SavedModel (no {SAVED_MODEL_PB})")
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=work_dir, prefix="push-"))
    try:
        files = {p.relative_to(saved_model_dir).as_posix(): p for p in saved_model_dir.rglob("*") if p.is_file()}
        files.update(_stage_extras(scratch, model_name, list(warmup_records or []), list(variant_files or [])))
        version = claim_version(model_store, model_name, owner)  # a retry gets its own claim back
        target = artifacts.model_version_uri(model_store, model_name, version)
        manifest = _already_pushed(target, files)
        if manifest is not None:
            log.info("%s v%d was pushed completely by an earlier try of %s: finishing it", model_name, version, owner)
        else:
            _refuse_if_served(model_store, model_name, version)
            _remove_partial(target)
            try:
                manifest = _upload(files, target, scratch, owner, weights_sha256)
            except Exception as error:
                _remove_partial(target)
                raise PushError(f"pushing {model_name} v{version} to {target} failed, nothing of it is served: "
                                f"{type(error).__name__}: {error}") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("pushed %s v%d: %d files, %d bytes, verified", model_name, version, len(manifest["files"]),
             sum(f["size"] for f in manifest["files"].values()))
    return PushedModel(
        uri=target, model_name=model_name, version=version, files=len(manifest["files"]),
        bytes=sum(f["size"] for f in manifest["files"].values()),
        warmup_requests=len(warmup_records or []),
        variants=tuple(sorted({rel.split("/")[1] for rel in files if rel.startswith(f"{VARIANTS_DIR}/")})),
        weights_sha256=manifest.get("weights_sha256"),
    )


def weights_digest(saved_model_dir: Path) -> str:
    """SHA-256 of a SavedModel's weights: every variable's name, dtype, shape and values, in name
    order. Equal digests are equal weights, whatever the files' bytes (the object graph, a save
    counter) say."""
    import hashlib

    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(saved_model_dir / "variables" / "variables"))
    digest = hashlib.sha256()
    dtypes = reader.get_variable_to_dtype_map()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH") or "save_counter" in name:
            continue
        value = reader.get_tensor(name)
        digest.update(f"{name}|{dtypes[name].name}|{list(getattr(value, 'shape', ()))}|".encode())
        digest.update(value.tobytes() if hasattr(value, "tobytes") else repr(value).encode())
    return digest.hexdigest()


def _upload(files: dict[str, Path], target: str, scratch: Path, owner: str,
            weights_sha256: str | None = None) -> dict[str, Any]:
    """Upload and verify every file, then the manifest, then ``saved_model.pb``; check the listing."""
    manifest: dict[str, Any] = {"pushed_by": owner, "pushed_at": now(), "files": {}}
    if weights_sha256:
        manifest["weights_sha256"] = weights_sha256
    for rel in sorted(files):
        if rel != SAVED_MODEL_PB:
            manifest["files"][rel] = storage.upload_verified(files[rel], storage.join(target, rel))
    # The manifest names saved_model.pb's digest before the file itself is written.
    manifest["files"][SAVED_MODEL_PB] = {"size": files[SAVED_MODEL_PB].stat().st_size,
                                         "sha256": storage.sha256_file(files[SAVED_MODEL_PB])}
    (scratch / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    storage.upload_verified(scratch / MANIFEST_FILE, storage.join(target, MANIFEST_FILE))
    storage.upload_verified(files[SAVED_MODEL_PB], storage.join(target, SAVED_MODEL_PB))
    stored = storage.list_files(target)
    expected = {rel: entry["size"] for rel, entry in manifest["files"].items()}
    expected[MANIFEST_FILE] = (scratch / MANIFEST_FILE).stat().st_size
    if stored != expected:
        wrong = sorted(set(stored) ^ set(expected) | {r for r in stored if stored[r] != expected.get(r)})
        raise storage.IntegrityError(f"{target} does not list exactly the files pushed: {wrong}")
    return manifest


def _already_pushed(target: str, files: dict[str, Path]) -> dict[str, Any] | None:
    """The manifest of ``target`` when an earlier try pushed exactly these files there completely."""
    if not storage.exists(storage.join(target, SAVED_MODEL_PB)) or not storage.exists(
            storage.join(target, MANIFEST_FILE)):
        return None
    manifest = json.loads(storage.read_bytes(storage.join(target, MANIFEST_FILE)))
    listed = storage.list_files(target)
    if set(manifest["files"]) != set(files) or any(
            listed.get(rel) != entry["size"] or storage.sha256_file(files[rel]) != entry["sha256"]
            for rel, entry in manifest["files"].items()):
        return None
    return manifest


def _refuse_if_served(model_store: str, model_name: str, version: int) -> None:
    """A version that serves is never rewritten, whoever claimed it."""
    from tasks.release.model_store import read_champion

    record = read_champion(model_store, model_name)
    if record is not None and int(record["version"]) == version:
        raise PushError(f"{model_name} v{version} is the champion: it is never rewritten")


def _remove_partial(target: str) -> None:
    """Best effort: remove a failed push's files (``saved_model.pb`` never got there). Locally
    the emptied directory stays as the claim of its number."""
    try:
        if storage.is_s3(target):
            storage.delete_dir(target)
        else:
            root = storage.local_path(target)
            for child in root.iterdir() if root.is_dir() else ():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    except Exception as error:  # noqa: BLE001 - the push error matters more than the cleanup's
        log.warning("could not remove the partial push at %s: %s", target, error)
