"""Data sources on the filesystems fsspec reaches: S3, Google Cloud Storage, Azure, HTTP(S), HDFS.

Local paths, ``file://`` and ``package://`` are read as files. A source with one of
:data:`SCHEMES` is listed, globbed and fetched by fsspec with the filesystem package its scheme
needs (``gcsfs``, ``adlfs``; HTTP needs only aiohttp, which is installed). ``s3://`` sources are
listed and globbed by fsspec too (``s3fs``, installed, which reads the standard AWS variables
as boto3 does) and fetched with boto3, like the artifacts. Credentials are each package's own
(Google's application default credentials, Azure's environment or CLI login). Sources are named by a pipeline's YAML, and a
trigger can only pick among the patterns the YAML allows, so no one else chooses where a worker
reads from. Chained URLs (``simplecache::...``) are refused: a source names one filesystem.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from tasks.errors import DataError

SCHEMES = ("gs", "gcs", "abfs", "abfss", "az", "adl", "http", "https", "hdfs", "webhdfs")
_GLOB = "*?["


def scheme_of(uri: str) -> str | None:
    """The scheme of a ``scheme://`` URI, lower-cased; None for a plain path."""
    return urlparse(uri).scheme.lower() if "://" in uri else None


def is_remote_source(uri: str) -> bool:
    """Whether fsspec reads ``uri`` (its scheme is one of :data:`SCHEMES`)."""
    return scheme_of(uri) in SCHEMES


def _filesystem(uri: str):
    import fsspec

    if "::" in uri:
        raise DataError(f"data source {uri}: chained URLs are not supported; name the file itself")
    parsed = urlparse(uri)
    if parsed.password is not None:  # recorded in manifests and MLflow: never a secret's place
        raise DataError(f"data source {parsed.scheme}://{parsed.hostname}/...: credentials do not belong in "
                        f"a source URL; give them to the filesystem (its environment or configuration)")
    try:
        return fsspec.core.url_to_fs(uri, **(_s3_options() if parsed.scheme == "s3" else {}))
    except ImportError as error:  # the scheme's filesystem package is not installed
        raise DataError(f"data source {uri}: {error}") from None


def _globbed(uri: str, path: str) -> bool:
    """Whether ``path`` (``uri``'s, as fsspec names it) is a glob: over HTTP ``?`` starts the
    query, so only ``*`` and ``[`` before it glob."""
    if scheme_of(uri) in ("http", "https"):
        return any(ch in path.split("?", 1)[0] for ch in "*[")
    return any(ch in path for ch in _GLOB)


def _s3_options() -> dict:
    """s3fs with the endpoint boto3 would use (``AWS_ENDPOINT_URL``), uncached listings."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    return {"use_listings_cache": False, **({"endpoint_url": endpoint} if endpoint else {})}


def matches(uri: str) -> list[str]:
    """The files ``uri`` names, as full URIs, sorted: itself, or what its glob matches.

    Raises:
        DataError: Nothing matches, or the scheme's package is missing.
    """
    fs, path = _filesystem(uri)
    globbed = _globbed(uri, path)
    try:
        if globbed:
            found = sorted(p for p in fs.glob(path) if fs.isfile(p))
        else:
            found = [path] if fs.isfile(path) else []
    except FileNotFoundError:
        found = []
    if not found:
        raise DataError(f"data source {uri}: {'no file matches' if globbed else 'no such file'}")
    return [p if scheme_of(p) else fs.unstrip_protocol(p) for p in found]


def download(uri: str, dest) -> None:
    """Copy one file to the local path ``dest``, streamed."""
    fs, path = _filesystem(uri)
    try:
        fs.get_file(path, str(dest))
    except FileNotFoundError:
        raise DataError(f"data source {uri}: no such file") from None


def fingerprint(uri: str) -> str:
    """What identifies a remote file's contents without reading them: the store's ETag (or MD5)
    with its size and modification time, as fsspec reports them."""
    fs, path = _filesystem(uri)
    info = fs.info(path)
    tag = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "md5", "checksum") if info.get(k)), "")
    when = next((str(info[k]) for k in ("LastModified", "mtime", "updated", "last_modified") if info.get(k)), "")
    return f"{tag}:{info.get('size')}:{when}"
