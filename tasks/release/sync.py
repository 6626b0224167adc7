"""``tfpipe serving-sync``: a local mirror of a model store for TensorFlow Serving, which cannot
read ``s3://`` (2.7 and later). Every version appears complete (renamed into place after its
checksums were verified) or not at all, and the local ``models.config`` serves each champion only
once its copy is there."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import artifacts, storage
from tasks.artifacts import MANIFEST_FILE, MODELS_CONFIG, SAVED_MODEL_PB
from tasks.release.model_store import (ModelStoreError, champion, manifest_mismatches, models, read_manifest,
                                       revert_pending, versions)
from tasks.release.models_config import parse_models_config, render_models_config

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    added: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    repaired: dict[str, list[int]] = field(default_factory=dict)
    champions: dict[str, int] = field(default_factory=dict)
    config: str = ""



def _download_version(version_uri: str, target: Path) -> None:
    """Download a version next to ``target``, check every file against the manifest, then rename
    it into place: TensorFlow Serving never sees it half-written."""
    manifest = read_manifest(version_uri)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.sync-"))
    try:
        storage.download_dir(version_uri, staging)
        problems = manifest_mismatches(staging, manifest)
        if problems:
            raise ModelStoreError(f"{version_uri}: {'; '.join(problems)}")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise



def sync_store(model_store: str, local_dir: Path, model_names: list[str] | None = None) -> SyncReport:
    """Mirror the store's versions and champions into ``local_dir`` for TensorFlow Serving.

    New versions are downloaded, verified against their manifests and renamed into place; then
    ``local_dir/models.config`` is rewritten (atomically) to serve each champion from
    ``local_dir``; then versions the store no longer holds are removed locally (never a local
    champion). A version that fails verification is skipped and reported, not published.
    """
    local_dir = Path(local_dir).resolve()
    local_dir.mkdir(parents=True, exist_ok=True)
    report = SyncReport()
    served: dict[str, int] = {}
    model_names = model_names or models(model_store)
    for name in model_names:
        try:
            revert_pending(model_store, name)  # a push that died before it committed
        except Exception as error:  # noqa: BLE001 - a read-only mirror still serves what the pointer says
            log.warning("serving-sync: could not revert an expired promotion of %s: %s", name, error)
        remote = set(versions(model_store, name))
        model_dir = local_dir / name
        model_dir.mkdir(exist_ok=True)
        present = {int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / SAVED_MODEL_PB).is_file()}
        for version in sorted(remote - present):
            try:
                _download_version(artifacts.model_version_uri(model_store, name, version), model_dir / str(version))
                report.added.setdefault(name, []).append(version)
            except (ModelStoreError, storage.ArtifactNotFoundError) as error:
                log.error("serving-sync: %s v%d not synced: %s", name, version, error)
                report.skipped.setdefault(name, []).append(f"v{version}: {error}")
        current = champion(model_store, name)
        if current is not None and current[0] not in report.added.get(name, []):
            _repair_local_copy(model_store, name, current[0], model_dir / str(current[0]), report)
        if current is not None and (model_dir / str(current[0]) / SAVED_MODEL_PB).is_file():
            served[name] = current[0]
        elif current is not None:
            log.error("serving-sync: champion %s v%d is not available locally; serving config unchanged for it",
                      name, current[0])
    previous = _read_local_config(local_dir)
    for name, (_, old_versions) in previous.items():
        if name not in served and old_versions and (local_dir / name / str(old_versions[0]) / SAVED_MODEL_PB).is_file():
            served[name] = old_versions[0]  # keep serving what was served rather than nothing
    text = render_models_config(served, str(local_dir))
    storage.write_bytes(str(local_dir / MODELS_CONFIG), text.encode())
    report.config, report.champions = str(local_dir / MODELS_CONFIG), dict(served)
    for name in model_names:
        model_dir = local_dir / name
        remote = set(versions(model_store, name))
        for path in sorted(model_dir.iterdir()):
            if path.name.isdigit() and int(path.name) not in remote and int(path.name) != served.get(name):
                doomed = path.with_name(f".{path.name}.deleted-{uuid.uuid4().hex[:8]}")
                os.rename(path, doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                report.removed.setdefault(name, []).append(int(path.name))
    return report



def _local_problems(local: Path, manifest: dict[str, Any]) -> list[str]:
    """What in a local copy differs from the manifest: changed or missing files, extra files, links."""
    problems = manifest_mismatches(local, manifest)
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local).as_posix()
        if path.is_symlink():
            problems.append(f"{rel} is a symbolic link")
        elif path.is_file() and rel not in manifest["files"] and rel != MANIFEST_FILE:
            problems.append(f"{rel} is not in the manifest")
    return problems



def _repair_local_copy(model_store: str, name: str, version: int, local: Path, report: SyncReport) -> None:
    """The champion's local copy is what TensorFlow Serving loads: it must match the store's
    manifest on every sync; one that does not is replaced by a fresh, verified download."""
    if not local.is_dir():
        return
    uri = artifacts.model_version_uri(model_store, name, version)
    try:
        problems = _local_problems(local, read_manifest(uri))
    except storage.ArtifactNotFoundError:
        return  # the store no longer holds it: left to the rest of the sync
    if not problems:
        return
    log.error("serving-sync: the local copy of %s v%d differs from the store (%s): replacing it", name, version,
              "; ".join(problems[:5]))
    doomed = local.with_name(f".{local.name}.damaged-{uuid.uuid4().hex[:8]}")
    os.rename(local, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        _download_version(uri, local)
        report.repaired.setdefault(name, []).append(version)
    except (ModelStoreError, storage.ArtifactNotFoundError) as error:
        report.skipped.setdefault(name, []).append(f"v{version}: {error}")



def _read_local_config(local_dir: Path) -> dict[str, tuple[str, list[int]]]:
    path = local_dir / MODELS_CONFIG
    if not path.is_file():
        return {}
    try:
        return parse_models_config(path.read_text())
    except Exception:  # noqa: BLE001 - a damaged file is rewritten from the store
        return {}
