"""Execution traces of training steps (``train.profile_steps``), and what they say.

:class:`StepProfiler` runs TensorFlow's profiler over a range of training steps on the chief:
the step functions' ops, the host's threads and the ``tf.data`` input pipeline, each call of the
step function marked as a step (``tf.profiler.experimental.Trace``), as TensorBoard's profile
plugin reads them. The trace is written under the run's TensorBoard folder
(``plugins/profile/<time>/<host>.xplane.pb``), which the train step logs to MLflow.

:func:`summarize` reads a trace back: the ops that took the most time, and the input-bound
share (the time the step functions waited for the next batch, over the steps' time).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

TRACE_SUFFIX = ".xplane.pb"
STEP_EVENT = "train"  # the name each call of the step function is marked with
# Ops that only call other ops (their time is the callees'), and the ops that wait for input.
_CALLERS = {"StatefulPartitionedCall", "PartitionedCall", "While", "StatelessWhile", "If", "StatelessIf",
            "Case", "StatelessCase", "RemoteCall"}
_INPUT_OPS = {"IteratorGetNext", "IteratorGetNextSync", "MultiDeviceIteratorGetNextFromShard",
              "IteratorGetNextAsOptional"}
_GET_NEXT = "IteratorGetNextOp::DoCompute"  # tf.data's own mark: a step function waiting for its batch
# tf.data's own threads: they prepare the next batches beside the steps (their time is not the steps').
_INPUT_THREADS = ("tf_data",)


class StepProfiler:
    """Profiles the training steps ``first`` to ``last`` (1-based, inclusive) into ``logdir``
    when this worker is ``active`` (the chief); nothing when ``steps`` is None."""

    def __init__(self, steps: tuple[int, int] | None, logdir: Path, active: bool) -> None:
        self.first, self.last = steps or (0, -1)
        self.logdir, self.active, self.running, self.traced = logdir, active, False, 0

    def until_boundary(self, step: int) -> int:
        """Steps from ``step`` (the last one done) to where the profiler starts or stops; calls
        are cut there, so that the trace holds exactly the steps asked for. Every worker cuts its
        calls at the same steps, profiling or not: their collectives stay in step."""
        boundaries = [b for b in (self.first - 1, self.last) if b > step]
        return min(boundaries) - step if boundaries else 1 << 62

    @contextmanager
    def call(self, step: int) -> Iterator[None]:
        """Around one call of the step function whose first step is ``step + 1``."""
        import tensorflow as tf

        if self.active and not self.running and self.first <= step + 1 <= self.last:
            self.logdir.mkdir(parents=True, exist_ok=True)
            tf.profiler.experimental.start(str(self.logdir))
            self.running = True
        if not self.running:
            yield
            return
        with tf.profiler.experimental.Trace(STEP_EVENT, step_num=step + 1, _r=1):
            yield
        self.traced += 1

    def after(self, step: int) -> None:
        """After the call that reached ``step``: the trace is written once the last step is in."""
        if self.running and step >= self.last:
            self.stop()

    def stop(self) -> None:
        import tensorflow as tf

        if self.running:
            tf.profiler.experimental.stop()
            self.running = False
            log.info("profile of training steps %d to %d (%d calls of the step function) in %s",
                     self.first, self.last, self.traced, self.logdir / "plugins" / "profile")


    def finish(self, steps_done: int) -> None:
        """At the training's end: a trace still open is written; a range never reached is said."""
        self.stop()
        if self.active and self.first and not self.traced:
            log.warning("train.profile_steps [%d, %d]: no trace, the training ended at step %d",
                        self.first, self.last, steps_done)


@dataclass
class TraceSummary:
    """What one trace says: the ops by time, and how much of the steps waited for input."""

    path: str
    steps: int
    step_seconds: float
    input_seconds: float
    ops: list[tuple[str, float, int]]  # (op type, seconds, count), most time first

    @property
    def input_bound_share(self) -> float:
        return self.input_seconds / self.step_seconds if self.step_seconds else 0.0

    def to_dict(self, top: int = 10) -> dict:
        return {"path": self.path, "steps": self.steps, "step_seconds": round(self.step_seconds, 6),
                "input_seconds": round(self.input_seconds, 6), "input_bound_share": round(self.input_bound_share, 4),
                "top_ops": [{"op": op, "seconds": round(s, 6), "count": n} for op, s, n in self.ops[:top]]}


def find_traces(folder: Path) -> list[Path]:
    """Every trace under ``folder`` (a TensorBoard folder, a model folder, a downloaded artifact)."""
    return sorted(folder.rglob(f"*{TRACE_SUFFIX}")) if folder.is_dir() else (
        [folder] if folder.name.endswith(TRACE_SUFFIX) else [])


def summarize(path: Path) -> TraceSummary:
    """Read a trace: the op events that started inside a marked step on the threads that run the
    step functions, by op type (function calls left out: their time is their ops'; tf.data's
    threads, which prepare the next batches beside the steps, too), and the time the steps waited
    for their batches. Checkpoints and evaluation between the steps are not counted."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    events = [(names.get(event.metadata_id, ""), line.timestamp_ns * 1000 + event.offset_ps, event.duration_ps,
               line.name.startswith(_INPUT_THREADS))
              for plane in space.planes
              for names in [{key: meta.name for key, meta in plane.event_metadata.items()}]
              for line in plane.lines for event in line.events]
    windows = sorted((start, start + duration) for name, start, duration, _ in events if name == STEP_EVENT)
    seconds: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    input_ps = get_next_ps = 0
    for name, start, duration, input_thread in events:
        if not _inside(windows, start):
            continue
        if name == _GET_NEXT:
            get_next_ps += duration
        op_type = name.rpartition(":")[2].strip() if ":" in name and "::" not in name else ""
        if input_thread or not op_type or op_type in _CALLERS or op_type.startswith("__"):
            continue
        seconds[op_type] += duration / 1e12
        counts[op_type] += 1
        if op_type in _INPUT_OPS:
            input_ps += duration
    ops = [(op, s, counts[op]) for op, s in seconds.most_common()]
    step_ps = sum(end - start for start, end in windows)
    # tf.data's mark where it is in the trace (a distributed iterator's batches), else the input ops.
    return TraceSummary(str(path), len(windows), step_ps / 1e12, (get_next_ps or input_ps) / 1e12, ops)


def _inside(windows: list[tuple[int, int]], at: int) -> bool:
    """Whether ``at`` falls in one of the sorted, disjoint ``windows``."""
    index = bisect.bisect_right(windows, (at, 1 << 80)) - 1
    return index >= 0 and windows[index][0] <= at < windows[index][1]
