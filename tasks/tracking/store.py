"""A new embedded tracking store (SQLite), made by a second process while this one goes on.

MLflow makes its tables the first time a client connects to a new database: about 5 s of imports
and schema migrations, in Python, one after the other with whatever the process does next.
:func:`start_new_store` hands that work to a child process, so that it runs on another core while
the caller loads what its next steps need; :meth:`NewStore.wait` joins it.

The child builds the database under a temporary name beside the store and links it into place
only when it is complete and only if no store appeared meanwhile, so no process ever opens half a
store. Whatever goes wrong in the child, the caller goes on as before: MLflow then makes the
tables itself at the first connection.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
WAIT_SECONDS = 300


def new_sqlite_store(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store that does not exist yet; None for any other store."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    path = Path(tracking_uri[len(SQLITE_PREFIX):].split("?", 1)[0])
    return None if path.exists() else path


class NewStore:
    """The child process making a new store; :meth:`wait` before the first connection."""

    def __init__(self, path: Path, process: subprocess.Popen) -> None:
        self.path, self.process = path, process

    def wait(self) -> bool:
        """Join the child; whether the store is now in place."""
        try:
            _, stderr = self.process.communicate(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        if self.process.returncode != 0:
            log.warning("making the tracking store %s in a second process failed (MLflow makes it now): %s",
                        self.path, (stderr or "").strip().splitlines()[-1:] or self.process.returncode)
        return self.path.exists()


def start_new_store(tracking_uri: str) -> NewStore | None:
    """Start making the store of ``tracking_uri`` in a child process, when it is a new SQLite one."""
    path = new_sqlite_store(tracking_uri)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        process = subprocess.Popen([sys.executable, "-m", __name__, str(path)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
    except OSError as error:
        log.warning("could not start a process to make the tracking store %s: %s", path, error)
        return None
    return NewStore(path, process)


def make_store(path: Path) -> bool:
    """Make a complete store at ``path`` (what an MLflow client's first connection does), unless
    one is there by the time it is done; returns whether this call put it there."""
    from mlflow import MlflowClient

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.touch(exist_ok=False)  # a folder it cannot write to fails now, not after MLflow's connection retries
    try:
        client = MlflowClient(tracking_uri=f"{SQLITE_PREFIX}{partial}")
        client.search_experiments(max_results=1)  # the tracking tables and their migrations
        client.search_registered_models(max_results=1)  # the registry's, the same database
        try:  # every change is committed: the file is complete under either name
            os.link(partial, path)  # never over a store another process made meanwhile
        except FileExistsError:
            return False
        return True
    finally:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    make_store(Path(sys.argv[1]))
