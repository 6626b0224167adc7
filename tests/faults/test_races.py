"""Release operations racing in processes of their own on one store: two pushes of one model; a
push, a rollback, retention and serving-sync at once; and a serving-sync mirror whose local copy
was changed behind its back. Afterwards the champion is whole and the pointer, models.config, the
registry alias and the mirror agree (docs/release.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tasks.release import model_store, sync
from tests.faults.release import ROOT, assert_intact, bless, claims, make_world, push, push_process, seed, serving_state

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def _settled(world, name: str, tmp_path) -> int:
    state = serving_state(world, name)
    assert not state["pending"] and state["pointer"] == state["config"] == state["alias"], state
    assert_intact(world, name, state["pointer"], tmp_path)
    return state["pointer"]


def test_two_pushes_of_one_model_race_to_distinct_versions_and_one_champion(trained, model, services, tmp_path):
    world = make_world(services, "local", model)
    name = "race-push"
    seed(trained, world, name)
    blessings = [bless(trained, world, name, run) for run in ("run-a", "run-b")]
    processes = [push_process(trained, world, name, run, b, tmp_path) for run, b in zip(("run-a", "run-b"), blessings)]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    # The loser of the compare-and-swap was gated again against the winner, and promoted after it.
    assert sum("gating the model again" in err for _, err in outputs) == 1
    assert claims(world, name) == ["1", "2", "3"]
    assert _settled(world, name, tmp_path) in (2, 3)
    assert model_store.read_champion(world["settings"].model_store, name)["generation"] == 3


RETENTION_LOOP = """
import sys, time
from pathlib import Path
from tasks.release import model_store
store, name, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
while not stop.exists():
    model_store.apply_retention(store, name, 1)
    time.sleep(0.05)
"""


def _tfpipe(world, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tasks.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **world["env"]})


@pytest.mark.parametrize("round_", [1, 2])
def test_push_rollback_retention_and_serving_sync_at_once_leave_one_whole_champion(
        trained, model, services, tmp_path, round_):
    world = make_world(services, "local", model)
    store, name = world["settings"].model_store, f"race-all-{round_}"
    seed(trained, world, name)
    push(trained, world, name, "second", bless(trained, world, name, "second"), **{"push.keep_versions": 2})
    blessing = bless(trained, world, name, "run-3")  # against v2
    mirror, stop = tmp_path / "mirror", tmp_path / "stop"
    syncer = _tfpipe(world, "serving-sync", str(mirror), "--model", name, "--interval", "0.2")
    retention = subprocess.Popen([sys.executable, "-c", RETENTION_LOOP, store, name, str(stop)], cwd=ROOT,
                                 stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pusher = push_process(trained, world, name, "run-3", blessing, tmp_path, **{"push.keep_versions": 2})
    rollback = _tfpipe(world, "rollback", name, "--by", "racer")
    (_, push_err), (_, rollback_err) = pusher.communicate(timeout=600), rollback.communicate(timeout=600)
    stop.touch()
    retention.communicate(timeout=60)
    syncer.terminate()
    syncer.communicate(timeout=60)
    # Each either did its work or was refused with a reason, never half-way.
    assert pusher.returncode == 0 or "rolled back" in push_err or "being removed" in push_err, push_err[-3000:]
    assert rollback.returncode == 0 or "\ntfpipe: " in "\n" + rollback_err, rollback_err[-3000:]
    assert "Traceback" not in rollback_err and retention.returncode == 0
    champion = _settled(world, name, tmp_path)
    # The mirror, synced once more, serves the champion from a copy that matches its manifest.
    report = sync.sync_store(store, mirror, [name])
    assert report.champions[name] == champion and not report.skipped
    manifest = model_store.read_manifest(f"{store}/{name}/{champion}")
    assert model_store.manifest_mismatches(mirror / name / str(champion), manifest) == []


def test_serving_sync_replaces_a_local_copy_that_differs_from_its_manifest(trained, model, services, tmp_path):
    world = make_world(services, "local", model)
    store, name, mirror = world["settings"].model_store, "tampered", tmp_path / "mirror"
    seed(trained, world, name)
    sync.sync_store(store, mirror, [name])
    local = mirror / name / "1"
    (local / "saved_model.pb").write_bytes(b"not the model")  # changed behind the mirror's back
    (local / "assets.extra" / "planted.txt").write_text("x")
    report = sync.sync_store(store, mirror, [name])
    assert report.repaired == {name: [1]} and report.champions == {name: 1}
    assert model_store.manifest_mismatches(local, model_store.read_manifest(f"{store}/{name}/1")) == []
    assert not (local / "assets.extra" / "planted.txt").exists()
