"""Checkpoints: the loop's state saved with the weights, so a retried task resumes at the step it
reached (mid-epoch: an epoch's order depends only on the seed and the epoch), the best epoch's
weights for early stopping, and the copy on shared storage (S3) a retry on another machine
restores.

Under ``multi_worker`` every worker takes part in saving (a collective operation) but only the
chief writes where others read (:class:`tasks.training.distribution.Writer`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

from tasks import storage
from tasks.artifacts import HISTORY_FILE
from tasks.training.distribution import Writer

log = logging.getLogger(__name__)


class LoopState:
    """The loop's position and early-stopping record as variables, checkpointed with the model and
    the optimizer; the history of finished epochs beside them (the chief's ``history.json``)."""

    def __init__(self, model, optimizer, checkpoint_dir: Path, writer: Writer) -> None:
        import tensorflow as tf

        def variable(value, dtype, name):
            return tf.Variable(value, dtype=dtype, trainable=False, name=name)

        self.step = variable(0, tf.int64, "step")
        self.epoch = variable(0, tf.int64, "epoch")
        self.best_loss = variable(math.inf, tf.float64, "best_eval_loss")
        self.best_epoch = variable(0, tf.int64, "best_epoch")
        self.bad_epochs = variable(0, tf.int64, "epochs_without_improvement")
        self.stopped = tf.Variable(False, trainable=False, name="stopped_early")
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, step=self.step, epoch=self.epoch, best_eval_loss=self.best_loss,
            best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, stopped=self.stopped)
        self.best_weights = tf.train.Checkpoint(model=model)
        self.dir, self.writer = checkpoint_dir, writer
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(writer.path(checkpoint_dir / "latest")),
                                                  max_to_keep=2)
        self.history: list[dict[str, float]] = []

    @property
    def history_path(self) -> Path:
        return self.dir / HISTORY_FILE

    def restore(self) -> int:
        """Restore the latest checkpoint (the chief's, read by every worker), if any; returns its step."""
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(self.dir / "latest"))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            if self.history_path.is_file():
                self.history = json.loads(self.history_path.read_text())[: int(self.epoch.numpy())]
            log.info("resuming from %s (step %d, epoch %d)", latest, int(self.step.numpy()), int(self.epoch.numpy()))
        return int(self.step.numpy())

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)
        if self.writer.role.is_chief:
            self.history_path.write_text(json.dumps(self.history))

    def end_epoch(self, record: dict[str, float], min_delta: float, patience: int | None,
                  before_write=lambda: None) -> None:
        """Record a finished epoch: keep its weights if its eval loss is the best so far, else
        count it towards early stopping. ``before_write`` runs before the weights are written."""
        self.history.append(record)
        epoch = int(self.epoch.numpy()) + 1
        self.epoch.assign(epoch)
        if record["eval_loss"] < float(self.best_loss.numpy()) - min_delta:
            self.best_loss.assign(record["eval_loss"])
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            before_write()
            self.best_weights.write(str(self.writer.path(self.dir / "best") / "weights"))
            return
        self.bad_epochs.assign_add(1)
        if patience is not None and int(self.bad_epochs.numpy()) >= patience:
            self.stopped.assign(True)
            log.info("early stopping after epoch %d: no eval loss improvement for %d epochs (best: epoch %d)",
                     epoch, patience, int(self.best_epoch.numpy()))

    def restore_best(self, restore: bool) -> bool:
        """Load the best epoch's weights when asked and they are not the last epoch's; returns whether it did."""
        best = int(self.best_epoch.numpy())
        if not restore or not best or best == int(self.epoch.numpy()):
            return False
        self.best_weights.read(str(self.dir / "best" / "weights")).assert_existing_objects_matched()
        log.info("exported the weights of epoch %d (lowest eval loss)", best)
        return True


_MIRRORED = ("latest", "best", HISTORY_FILE)  # the chief's part of the checkpoint folder


class CheckpointMirror:
    """A copy of the checkpoint folder on shared storage (S3), pushed by the chief after each save.

    TensorFlow writes checkpoints through its own file system, which has no ``s3://`` here, so
    they are written locally and copied: a retry on another machine (another Airflow worker, a
    new pod) restores the copy with :func:`restore_checkpoints` and resumes. Each push uploads
    what changed, variable data first, then indexes, then the ``checkpoint`` state file and the
    history, and then removes the checkpoints the manager dropped, so the copy only ever names
    complete checkpoints.

    A push runs on a thread of its own while training goes on; at most one is in flight, and
    :meth:`wait` (which raises what the upload raised) must come before anything writes into
    the mirrored folders again, so a push never reads a file being rewritten.
    """

    def __init__(self, local: Path, uri: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.local, self.uri = local, uri
        self._sent: dict[str, tuple[int, int] | None] = dict.fromkeys(storage.list_files(uri))
        self.uploaded = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-mirror")
        self._pending = None

    def push_async(self) -> None:
        """Start pushing what the folder holds now (after the previous push has ended)."""
        self.wait()
        self._pending = self._pool.submit(self.push)

    def wait(self) -> None:
        """Let the push in flight finish; raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown()

    @staticmethod
    def _order(rel: str) -> tuple[int, str]:
        name = rel.rsplit("/", 1)[-1]
        return (0 if ".data-" in name else 1 if name.endswith(".index") else 2), rel

    def push(self) -> int:
        """Upload what changed since the last push and drop what is gone; returns files uploaded."""
        files = {p.relative_to(self.local).as_posix(): p for p in self.local.rglob("*")
                 if p.is_file() and p.relative_to(self.local).parts[0] in _MIRRORED}  # not other workers' scratch
        uploaded = 0
        for rel in sorted(files, key=self._order):
            stat = files[rel].stat()
            if self._sent.get(rel) != (stat.st_size, stat.st_mtime_ns):
                storage.upload_file(files[rel], storage.join(self.uri, rel))
                self._sent[rel] = (stat.st_size, stat.st_mtime_ns)
                uploaded += 1
        self.uploaded += uploaded
        for rel in sorted(set(self._sent) - set(files)):
            storage.delete_file(storage.join(self.uri, rel))
            del self._sent[rel]
        return uploaded


def restore_checkpoints(local: Path, uri: str) -> int:
    """Copy the mirrored checkpoints into ``local`` when it has none; returns files copied.

    The copy is downloaded beside ``local`` and renamed into place, so processes restoring
    into one shared folder at once (workers on a shared volume) never see half a copy: the
    first rename wins and the others discard theirs.
    """
    if (local / "latest" / "checkpoint").is_file() or not storage.exists(storage.join(uri, "latest", "checkpoint")):
        return 0
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=local.parent, prefix=f".{local.name}-restore-"))
    try:
        files = storage.download_dir(uri, staging)
        if local.exists() and not (local / "latest" / "checkpoint").is_file():
            shutil.rmtree(local, ignore_errors=True)  # a try that ended before its first checkpoint
        try:
            staging.rename(local)
        except OSError:  # another process restored first
            return 0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored %d checkpoint files from %s", len(files), uri)
    return len(files)
