"""Heavy libraries loaded with Python's cycle collector paused, and kept out of its scans.

TensorFlow with TFDV and MLflow leave about 800,000 objects on the heap. The collector's full
pass walks every one of them, and it runs whenever the heap has grown by a quarter: seven passes
while TFDV loads (1.9 s on penguins), 0.5 to 0.8 s for each later pass inside a step, and seconds
more in the last passes when the interpreter exits (docs/benchmarks.md). What an import makes
lives as long as its module, that is as long as the process, so :func:`load` imports with the
collector paused and then freezes the heap (:func:`gc.freeze`): the collector leaves those
objects alone from then on and collects what the steps make as before.
"""

from __future__ import annotations

import gc
import importlib
import sys


def load(*modules: str) -> None:
    """Import ``modules`` (names from this package's code, never from input) that this process
    has not loaded yet, without collector passes during the import; then freeze the heap."""
    missing = [name for name in modules if name not in sys.modules]
    if not missing:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in missing:
            importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
