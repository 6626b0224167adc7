"""Heavy libraries load with the cycle collector paused and stay out of its scans (tasks/heap.py)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tasks.steps import STEP_TABLE

ROOT = Path(__file__).resolve().parents[2]


def _in_fresh_interpreter(script: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_library_loads_without_collector_passes_and_is_frozen_after():
    result = _in_fresh_interpreter(
        "import gc, json, sys\n"
        "from tasks import heap\n"
        "passes = []\n"
        "gc.callbacks.append(lambda phase, info: passes.append(info['generation']) if phase == 'start' else None)\n"
        "before = gc.get_freeze_count()\n"
        "heap.load('pandas')\n"
        "frozen, during = gc.get_freeze_count(), len(passes)\n"
        "heap.load('pandas')\n"
        "again = gc.get_freeze_count()\n"
        "made = [object() for _ in range(100000)]\n"  # objects made after the load are the collector's again
        "gc.collect()\n"
        "print(json.dumps({'loaded': 'pandas' in sys.modules, 'during': during,\n"
        "                  'before': before, 'frozen': frozen, 'again': again, 'enabled': gc.isenabled(),\n"
        "                  'collected_after': passes[-1] if passes else None}))\n"
    )
    assert result["loaded"] and result["enabled"] and result["during"] == 0
    assert result["before"] == 0 and result["frozen"] > 50_000  # what the import made, out of the scans
    assert result["again"] == result["frozen"]  # a library already loaded changes nothing
    assert result["collected_after"] == 2  # the collector still runs on what comes later


def test_a_paused_collector_stays_paused():
    result = _in_fresh_interpreter(
        "import gc, json\n"
        "from tasks import heap\n"
        "gc.disable()\n"
        "heap.load('decimal')\n"
        "print(json.dumps({'enabled': gc.isenabled()}))\n"
    )
    assert result == {"enabled": False}


def test_each_step_loads_installed_libraries():
    for step in STEP_TABLE:
        for name in step.loads:
            assert importlib.util.find_spec(name) is not None, (step.name, name)
    assert "tensorflow" in {name for step in STEP_TABLE for name in step.loads}
