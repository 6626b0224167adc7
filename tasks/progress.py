"""Progress of long steps: log lines in task logs, a live bar on a terminal.

The steps report progress as ordinary log records carrying ``extra={"progress": {...}}``:

* ``task``: what is progressing (``ingest``, ``train epoch 3/20``);
* ``done`` and ``total`` (``total`` may be absent when it is unknown, e.g. rows of a stream);
* ``unit``, ``rate`` (units per second), ``eta`` (seconds), ``detail`` (free text).

In an Airflow task log they are the step's INFO lines (rows ingested, step and epoch with
rate and ETA). When ``tfpipe`` runs in a terminal, :func:`install` adds a handler that draws
them as one updating line instead; steps also emit such records at DEBUG level between their
INFO lines, so the bar moves about once a second.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

LOGGER = "tasks"
BAR_WIDTH = 24


def report(logger: logging.Logger, level: int, message: str, *args: Any, **progress: Any) -> None:
    """Log ``message`` with ``progress`` attached (see the module docstring for the fields)."""
    logger.log(level, message, *args, extra={"progress": progress})


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def render(progress: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """One line: ``train epoch 2/5 [#####.....]  42%  120/288 steps  1,234 steps/s  ETA 0:12  loss 0.31``."""
    done, total, unit = progress.get("done", 0), progress.get("total"), progress.get("unit", "")
    parts = [str(progress.get("task", ""))]
    if total:
        share = min(1.0, done / total)
        filled = int(round(share * width))
        parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {share * 100:3.0f}%")
        parts.append(f"{done:,}/{total:,} {unit}".rstrip())
    else:
        parts.append(f"{done:,} {unit}".rstrip())
    if progress.get("rate"):
        parts.append(f"{progress['rate']:,.0f} {unit}/s")
    if progress.get("eta") is not None:
        parts.append(f"ETA {_duration(progress['eta'])}")
    if progress.get("detail"):
        parts.append(str(progress["detail"]))
    return "  ".join(parts)


class TerminalProgress(logging.Handler):
    """Draws progress records as one line rewritten in place; prints warnings and errors as
    lines (what Python would print without a handler)."""

    def __init__(self, stream: TextIO, min_interval: float = 0.2) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.min_interval = min_interval
        self._shown = False
        self._last = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, "progress", None)
        try:
            if progress is None:
                if record.levelno >= logging.WARNING:
                    self.clear()
                    self.stream.write(f"{record.levelname.lower()}: {record.getMessage()}\n")
                    self.stream.flush()
                return
            now = time.monotonic()
            if now - self._last < self.min_interval and record.levelno < logging.INFO:
                return
            self._last = now
            self.stream.write("\r\033[K" + render(progress))
            self.stream.flush()
            self._shown = True
        except Exception:  # noqa: BLE001 - a display problem must never fail a step
            self.handleError(record)

    def clear(self) -> None:
        """End the live line, so that the next output starts on a fresh line."""
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def install(stream: TextIO | None = None) -> TerminalProgress | None:
    """Show progress bars on ``stream`` (stderr) when it is a terminal; None otherwise."""
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return None
    handler = TerminalProgress(stream)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    # The bar replaces the step's log lines here; libraries may have given the root logger a handler.
    logger.propagate = False
    return handler
