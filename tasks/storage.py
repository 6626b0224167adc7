"""Files by URI, on a local directory or on S3 (any S3-compatible endpoint, through boto3).

TensorFlow 2.16 cannot open ``s3://`` itself, so steps work on local directories and use
:func:`materialize` to fetch their inputs and :func:`publish_dir` to publish their outputs.
A published directory is complete only once its ``_SUCCESS`` marker exists: the marker is
written last, so a failed step leaves nothing a later step could mistake for complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tasks.errors import UserError

SUCCESS_MARKER = "_SUCCESS"
# Objects up to this size go up in one PutObject whose SHA-256 S3 checks on receipt; larger
# ones in parts (each part's checksum checked by S3).
SINGLE_PUT_LIMIT = 4 << 30
# What S3 (and compatible stores) answer when a conditional write loses to another writer.
PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class ArtifactNotFoundError(FileNotFoundError):
    """An input artifact is missing or was never published completely."""


class IntegrityError(RuntimeError):
    """A copied file does not match its source (size or checksum)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path segments onto a local path or an ``s3://`` URI."""
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(local_path(uri), *parts))


def local_path(uri: str) -> Path:
    """A ``file://`` URI or plain path as a :class:`Path`."""
    if uri.startswith("file://"):
        return Path(urlparse(uri).path)
    return Path(uri)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@lru_cache(maxsize=1)
def s3_client():
    """A boto3 S3 client; endpoint, credentials and retries (``AWS_MAX_ATTEMPTS``,
    ``AWS_RETRY_MODE``) come from the standard AWS settings. A request that gets no answer
    within ``TFPIPE_S3_TIMEOUT_SECONDS`` (default 60) is retried like a 5xx answer."""
    import boto3
    from botocore.config import Config

    timeout = float(os.environ.get("TFPIPE_S3_TIMEOUT_SECONDS") or 60)
    return boto3.session.Session().client("s3", config=Config(connect_timeout=min(timeout, 10.0),
                                                               read_timeout=timeout))


def reset_clients() -> None:
    """Forget cached clients (after the AWS environment changed)."""
    s3_client.cache_clear()
    _CONDITIONAL_WRITES.clear()


class ConditionalWritesError(UserError):
    """The S3 endpoint ignores conditional writes, on which the model store's safety rests (a
    retry cannot help: the task fails at once)."""


_CONDITIONAL_WRITES: set[tuple[str, str]] = set()


def require_conditional_writes(uri: str) -> None:
    """Refuse an S3 endpoint that ignores conditional writes, once per endpoint and bucket.

    The model store relies on them: a version number is claimed with ``If-None-Match: *`` and
    the champion pointer and ``models.config`` are rewritten with ``If-Match``. An endpoint that
    ignores them would let two pushes share a version and a stale writer overwrite the champion.
    A probe object (a hidden name beside ``uri``) is written with ``If-None-Match: *`` twice and
    once with a wrong ``If-Match``; the last two must fail with 412, and the probe is removed.

    Raises:
        ConditionalWritesError: The endpoint accepted a write it must refuse.
    """
    from botocore.exceptions import ClientError

    client = s3_client()
    bucket, prefix = split_s3(uri)
    if (client.meta.endpoint_url, bucket) in _CONDITIONAL_WRITES:
        return
    folder = prefix.rstrip("/").rpartition("/")[0]  # beside the object that is about to be written
    probe = "/".join(part for part in (folder, f".tfpipe-probe-{uuid.uuid4().hex}") if part)
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"probe", IfNoneMatch="*")
    except ClientError as error:  # the key is new: it exists only if our own write's answer was lost
        if error.response.get("Error", {}).get("Code") not in PRECONDITION_FAILED:
            raise
    accepted = []
    try:
        for label, condition in (("If-None-Match: * on an existing object", {"IfNoneMatch": "*"}),
                                 ("If-Match with another ETag", {"IfMatch": '"00000000000000000000000000000000"'})):
            try:
                client.put_object(Bucket=bucket, Key=probe, Body=b"overwritten", **condition)
                accepted.append(label)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in PRECONDITION_FAILED:
                    raise
    finally:
        client.delete_object(Bucket=bucket, Key=probe)
    if accepted:
        raise ConditionalWritesError(
            f"the S3 endpoint {client.meta.endpoint_url} ignores conditional writes: it accepted a PUT with "
            f"{' and one with '.join(accepted)} on s3://{bucket}/{probe}, where S3 answers 412 Precondition Failed. "
            "The model store needs them (a version is claimed with If-None-Match, the champion pointer and "
            "models.config are rewritten with If-Match); without them two pushes could share a version. Use an "
            "endpoint that honours them (AWS S3, a recent MinIO or Ceph RGW) and no proxy that drops the headers.")
    _CONDITIONAL_WRITES.add((client.meta.endpoint_url, bucket))


def _s3_listing(uri: str) -> list[tuple[str, int, str]]:
    """(relative key, size, ETag) of every object below ``uri``."""
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    keys: list[tuple[str, int, str]] = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend((item["Key"][len(prefix):], item["Size"], item.get("ETag", "")) for item in page.get("Contents", []))
    return keys


def _s3_keys(uri: str) -> list[tuple[str, int]]:
    return [(key, size) for key, size, _ in _s3_listing(uri)]


def exists(uri: str) -> bool:
    """Whether a file exists at ``uri``."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return local_path(uri).is_file()


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise ArtifactNotFoundError(f"{uri} does not exist") from None
            raise
    path = local_path(uri)
    if not path.is_file():
        raise ArtifactNotFoundError(f"{uri} does not exist")
    return path.read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file; local writes go through a temporary name and a rename."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def list_dir(uri: str) -> list[str]:
    """Names of the immediate children (files and directories) of a directory."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names: set[str] = set()
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        return sorted(n for n in names if n)
    path = local_path(uri)
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def list_files(uri: str) -> dict[str, int]:
    """Every file below a directory, as relative path to size in bytes."""
    if is_s3(uri):
        return dict(_s3_keys(uri))
    root = local_path(uri)
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def delete_file(uri: str) -> None:
    """Remove one file or object (absent is fine)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        local_path(uri).unlink(missing_ok=True)


def delete_dir(uri: str) -> None:
    """Remove a directory and everything below it (absent is fine)."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        keys = [prefix.rstrip("/") + "/" + k for k, _ in _s3_keys(uri)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            s3_client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        return
    shutil.rmtree(local_path(uri), ignore_errors=True)


def download_file(uri: str, dest: Path) -> Path:
    """Copy one object or file to ``dest`` without holding it in memory."""
    from tasks.filesystems import download, is_remote_source

    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().download_file(bucket, key, str(dest))
    elif is_remote_source(uri):
        download(uri, dest)
    else:
        shutil.copyfile(local_path(uri), dest)
    return dest


def contained(dest: Path, rel: str) -> Path:
    """``dest / rel``, refused when ``rel`` would lead outside ``dest`` (an absolute path, a ``..``
    or empty segment: an S3 key may hold anything)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\x00" in rel:
        raise IntegrityError(f"refusing to copy {rel!r}: it would be written outside {dest}")
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise IntegrityError(f"refusing to copy {rel!r}: it would be written outside {dest}")
    return target


def download_dir(uri: str, dest: Path) -> dict[str, int]:
    """Copy every file below ``uri`` into ``dest``; returns relative path to size.

    Raises:
        IntegrityError: A key or file would land outside ``dest``, or a local file is a symbolic
            link (a store is only trusted to hold its own files).
    """
    files = list_files(uri)
    for rel in files:
        target = contained(dest, rel)
        if not is_s3(uri) and any(p.is_symlink() for p in _below(local_path(uri), rel)):
            raise IntegrityError(f"refusing to copy {join(uri, rel)}: a symbolic link")
        download_file(join(uri, rel), target)
    return files


def _below(root: Path, rel: str) -> list[Path]:
    """Every path from ``root`` down to ``root / rel`` (for symbolic-link checks)."""
    paths, current = [], root
    for part in rel.split("/"):
        current = current / part
        paths.append(current)
    return paths


def upload_file(local: Path, uri: str) -> None:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().upload_file(str(local), bucket, key)
    else:
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)


def _ordered(files: Iterable[Path], root: Path, last: tuple[str, ...]) -> list[Path]:
    """Files with any named in ``last`` moved to the end, in that order."""
    files = sorted(files)
    tail = [root / name for name in last if (root / name) in files]
    return [f for f in files if f not in tail] + tail


def copy_tree(local_dir: Path, uri: str, last: tuple[str, ...] = ()) -> dict[str, int]:
    """Copy every file of ``local_dir`` below ``uri``; files named in ``last`` go last.

    Returns:
        Relative path to size of every file copied.
    """
    files = [p for p in local_dir.rglob("*") if p.is_file()]
    copied: dict[str, int] = {}
    for path in _ordered(files, local_dir, last):
        rel = path.relative_to(local_dir).as_posix()
        upload_file(path, join(uri, rel))
        copied[rel] = path.stat().st_size
    return copied


def publish_dir(local_dir: Path, uri: str) -> str:
    """Publish a finished local directory at ``uri``, replacing what a previous try left.

    Locally the directory is moved (or, across filesystems, copied) beside the target and
    renamed into place, so ``local_dir`` is gone afterwards; on S3 the old prefix is cleared
    and the files uploaded. Either way ``_SUCCESS`` is written last.
    """
    (local_dir / SUCCESS_MARKER).unlink(missing_ok=True)
    if is_s3(uri):
        delete_dir(uri)
        copy_tree(local_dir, uri)
        write_bytes(join(uri, SUCCESS_MARKER), b"")
        return uri
    target = local_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(local_dir, staging)
    except OSError:  # another filesystem
        shutil.copytree(local_dir, staging)
    (staging / SUCCESS_MARKER).write_bytes(b"")
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return str(target)


def require_complete(uri: str) -> None:
    """Raise unless ``uri`` was published completely by :func:`publish_dir`."""
    if not exists(join(uri, SUCCESS_MARKER)):
        raise ArtifactNotFoundError(
            f"artifact {uri} is missing or incomplete (no {SUCCESS_MARKER} marker): "
            "the step that produces it did not finish"
        )


def materialize(uri: str, cache_dir: Path) -> Path:
    """A local directory holding the files of ``uri`` (downloaded once when on S3)."""
    if not is_s3(uri):
        path = local_path(uri)
        if not path.exists():
            raise ArtifactNotFoundError(f"{uri} does not exist")
        return path
    files = _s3_listing(uri)
    if not files:
        raise ArtifactNotFoundError(f"{uri} does not exist or is empty")
    # Keyed by the listing with every object's ETag (its content's digest), so a republished
    # artifact is fetched again even when its files kept their names and sizes.
    digest = hashlib.sha256(repr((uri, sorted(files))).encode()).hexdigest()[:16]
    target = cache_dir / digest
    if (target / ".materialized").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{digest}-"))
    download_dir(uri, staging)
    (staging / ".materialized").write_text(uri)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def sha256_file(path: Path) -> str:
    return _digests(path)[0].hexdigest()


def _digests(path: Path) -> tuple[Any, Any]:
    """SHA-256 and MD5 of a file in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha, md5


def upload_verified(local: Path, uri: str) -> dict[str, Any]:
    """Copy one file to ``uri`` and prove the copy equals the source.

    Locally the copy is read back and hashed. On S3 the object goes up with its SHA-256 and
    MD5, which S3 checks on receipt, and is then checked with ``HeadObject``: its size, and its
    stored SHA-256 (or, where an endpoint keeps none, its single-part ETag, the MD5).

    Returns:
        ``{"size": bytes, "sha256": hex}`` of the file.

    Raises:
        IntegrityError: The stored object differs from the source.
    """
    sha, md5 = _digests(local)
    size = local.stat().st_size
    record = {"size": size, "sha256": sha.hexdigest()}
    if not is_s3(uri):
        # Under a temporary name, checked and flushed, then renamed: a crash never leaves a
        # torn file under the real name (saved_model.pb's presence means "complete").
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
        try:
            shutil.copyfile(local, partial)
            with partial.open("rb") as handle:
                os.fsync(handle.fileno())
            copied = partial.stat().st_size, sha256_file(partial)
            if copied != (size, record["sha256"]):
                raise IntegrityError(f"{uri}: the copy differs from {local} (size {copied[0]} vs {size})")
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return record
    bucket, key = split_s3(uri)
    client = s3_client()
    if size <= SINGLE_PUT_LIMIT:
        with local.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body,
                              ContentMD5=base64.b64encode(md5.digest()).decode(),
                              ChecksumSHA256=base64.b64encode(sha.digest()).decode())
    else:
        client.upload_file(str(local), bucket, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"})
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    problems = []
    if head["ContentLength"] != size:
        problems.append(f"size {head['ContentLength']} != {size}")
    stored_sha = head.get("ChecksumSHA256")
    etag = head.get("ETag", "").strip('"')
    if stored_sha and "-" not in stored_sha and stored_sha != base64.b64encode(sha.digest()).decode():
        problems.append("SHA-256 differs")
    elif not stored_sha and len(etag) == 32 and etag != md5.hexdigest():
        problems.append(f"ETag {etag} is not the MD5 {md5.hexdigest()}")
    if problems:
        raise IntegrityError(f"{uri}: the stored object differs from {local}: {', '.join(problems)}")
    return record


def update_bytes(uri: str, change: Callable[[bytes | None], bytes | None], attempts: int = 50) -> bytes | None:
    """Read-modify-write one small file without losing a concurrent writer's update.

    ``change`` gets the current content (None when absent) and returns the new one (None: leave
    it as it is); it may read other files, whose state is then covered too. Locally the update
    holds an exclusive lock on ``<file>.lock``; on S3 it is optimistic: the write is conditional
    on the ETag that was read (``If-Match``, or ``If-None-Match: *`` when creating), and a lost
    race reads and calls ``change`` again.

    Returns:
        The content as written (or as found, when ``change`` returned None).
    """
    if not is_s3(uri):
        import fcntl

        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = path.read_bytes() if path.is_file() else None
                new = change(current)
                if new is None:
                    return current
                write_bytes(uri, new)
                return new
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    from botocore.exceptions import ClientError

    require_conditional_writes(uri)
    bucket, key = split_s3(uri)
    client = s3_client()
    for attempt in range(attempts):
        try:
            response = client.get_object(Bucket=bucket, Key=key)
            current, condition = response["Body"].read(), {"IfMatch": response["ETag"]}
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                raise
            current, condition = None, {"IfNoneMatch": "*"}
        new = change(current)
        if new is None:
            return current
        try:
            client.put_object(Bucket=bucket, Key=key, Body=new, **condition)
            return new
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in PRECONDITION_FAILED:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"{uri}: gave up after {attempts} concurrent updates")


def update_json(uri: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
                attempts: int = 50) -> dict[str, Any] | None:
    """:func:`update_bytes` for one small JSON document."""
    def as_bytes(current: bytes | None) -> bytes | None:
        new = change(json.loads(current) if current is not None else None)
        return json.dumps(new, indent=2).encode() if new is not None else None

    written = update_bytes(uri, as_bytes, attempts)
    return json.loads(written) if written is not None else None
