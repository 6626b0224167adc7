"""push_model: copy a blessed SavedModel into TensorFlow Serving's ``<model>/<version>/`` layout.

* Versions are increasing integers. A version is *claimed* before any file is written: locally
  by creating the directory (``mkdir`` fails if it exists), on S3 by a conditional
  ``PutObject`` (``If-None-Match: *``) of ``<model>/.claims/<version>``. A claimed version is
  never written by anyone else and never overwritten.
* ``saved_model.pb`` is copied last, after every other file
  was checked by size: TensorFlow Serving treats its presence as "this version is ready",
  so it never loads a half-copied model.
* A version counts as pushed (and as champion) only once ``saved_model.pb`` is there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tasks import artifacts, storage

SAVED_MODEL_PB = "saved_model.pb"
CLAIMS = ".claims"


class PushError(RuntimeError):
    """The model was not pushed; the message says why."""


@dataclass(frozen=True)
class PushedModel:
    uri: str
    model_name: str
    version: int
    files: int
    bytes: int
    registry_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def versions(model_store: str, model_name: str) -> list[int]:
    """Complete versions (those with ``saved_model.pb``), ascending."""
    root = artifacts.model_dir_uri(model_store, model_name)
    found = []
    for name in storage.list_dir(root):
        if name.isdigit() and storage.exists(storage.join(root, name, SAVED_MODEL_PB)):
            found.append(int(name))
    return sorted(found)


def champion(model_store: str, model_name: str) -> tuple[int, str] | None:
    """``(version, uri)`` of the latest complete version: what TF Serving serves by default."""
    done = versions(model_store, model_name)
    if not done:
        return None
    return done[-1], artifacts.model_version_uri(model_store, model_name, done[-1])


def _claimed(model_store: str, model_name: str) -> set[int]:
    root = artifacts.model_dir_uri(model_store, model_name)
    taken = {int(n) for n in storage.list_dir(root) if n.isdigit()}
    taken |= {int(n) for n in storage.list_dir(storage.join(root, CLAIMS)) if n.isdigit()}
    return taken


def _try_claim(model_store: str, model_name: str, version: int, owner: str) -> bool:
    if storage.is_s3(model_store):
        from botocore.exceptions import ClientError

        bucket, key = storage.split_s3(storage.join(artifacts.model_dir_uri(model_store, model_name), CLAIMS, str(version)))
        try:
            storage.s3_client().put_object(Bucket=bucket, Key=key, Body=owner.encode(), IfNoneMatch="*")
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
    try:
        storage.local_path(artifacts.model_version_uri(model_store, model_name, version)).mkdir(parents=True)
        return True
    except FileExistsError:
        return False


def claim_version(model_store: str, model_name: str, owner: str, attempts: int = 100) -> int:
    """Atomically claim the next free version number."""
    for _ in range(attempts):
        candidate = max(_claimed(model_store, model_name), default=0) + 1
        if _try_claim(model_store, model_name, candidate, owner):
            return candidate
    raise PushError(f"could not claim a version of {model_name} in {model_store} after {attempts} attempts")


def push_model(
    saved_model_dir: Path,
    blessing: dict[str, Any],
    model_store: str,
    model_name: str,
    owner: str,
) -> PushedModel:
    """Push a local SavedModel directory after re-checking its blessing.

    Raises:
        PushError: The blessing is negative, or the copy could not be verified.
    """
    if not blessing.get("blessed"):
        raise PushError(
            f"refusing to push {blessing.get('model_uri')}: it is not blessed ({'; '.join(blessing.get('reasons', []))})"
        )
    if not (saved_model_dir / SAVED_MODEL_PB).is_file():
        raise PushError(f"{saved_model_dir} is not a SavedModel (no {SAVED_MODEL_PB})")
    version = claim_version(model_store, model_name, owner)
    target = artifacts.model_version_uri(model_store, model_name, version)
    files = {p.relative_to(saved_model_dir).as_posix(): p for p in saved_model_dir.rglob("*") if p.is_file()}
    sizes = {rel: path.stat().st_size for rel, path in files.items()}
    for rel in sorted(files):
        if rel != SAVED_MODEL_PB:
            storage.upload_file(files[rel], storage.join(target, rel))
    _verify(target, {r: s for r, s in sizes.items() if r != SAVED_MODEL_PB}, version)
    storage.upload_file(files[SAVED_MODEL_PB], storage.join(target, SAVED_MODEL_PB))
    _verify(target, sizes, version)
    return PushedModel(uri=target, model_name=model_name, version=version, files=len(files), bytes=sum(sizes.values()))


def _verify(target: str, expected: dict[str, int], version: int) -> None:
    stored = storage.list_files(target)
    wrong = sorted(p for p, size in expected.items() if stored.get(p) != size)
    if wrong:
        raise PushError(f"version {version} at {target} does not match the source after the copy: {wrong}")
