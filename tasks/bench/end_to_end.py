"""``tfpipe bench tfx``: time to a served model, against TFX's penguin pipeline on the same table.

Interleaved ``repeat`` times, each from a fresh home (nothing cached, no champion yet):

  tfx                 TFX 1.16's penguin pipeline (``tasks/bench/tfx_pipeline.py``) with
                      ``LocalDagRunner``, in its own environment: CsvExampleGen, StatisticsGen,
                      SchemaGen, ExampleValidator, Trainer (100 steps at batch 20), Evaluator,
                      Pusher
  tfpipe_run          ``tfpipe run penguins``: all six steps, every optimized variant built and
                      measured, the model exported with both signatures and logged to MLflow
  airflow_dags_test   ``airflow dags test penguins``: the same through Airflow, a process per task

Each is timed from its command's start to its end (interpreter start and imports included) and
must have pushed a model. TFX runs on the processed penguins table of its tutorials (the four
measurements scaled to [0, 1], rows with a missing one dropped, 342 rows); tfpipe on the raw
table (344 rows, seven columns, missing values). TFX 1.16 needs Python 3.9 or 3.10: the suite
looks for one (``--python``, ``TFPIPE_TFX_PYTHON``, ``python3.10`` or ``python3.9`` on the
PATH, pyenv's versions) and makes the environment once (``--tfx-env``, default
``.tfpipe/bench/tfx-venv``), with pinned versions; tfpipe's own environment is never touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import statistics as stats_lib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks.bench.common import suite_report
from tasks.errors import UserError

TFX_REQUIREMENTS = ("tfx==1.16.0", "tensorflow==2.16.2", "tensorflow-data-validation==1.16.1", "tfx-bsl==1.16.1",
                    "tf-keras==2.16.0", "dill")
TFX_PYTHONS = ("3.10", "3.9")
PIPELINE_FILE = Path(__file__).with_name("tfx_pipeline.py")
FEATURES = ("culmen_length_mm", "culmen_depth_mm", "flipper_length_mm", "body_mass_g")
# What each orchestration's run is timed against: a run at most this share of TFX's time.
TARGETS = {"tfpipe_run/tfx": 0.5, "airflow_dags_test/tfx": 0.75}


def find_python(explicit: str | None = None) -> str:
    """An interpreter TFX 1.16 supports (Python 3.9 or 3.10)."""
    candidates = [explicit, os.environ.get("TFPIPE_TFX_PYTHON")]
    candidates += [shutil.which(f"python{version}") for version in TFX_PYTHONS]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for version in TFX_PYTHONS:
        candidates += sorted(glob.glob(str(pyenv / f"{version}.*" / "bin" / "python")), reverse=True)
    for candidate in filter(None, candidates):
        found = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip() in TFX_PYTHONS:
            return candidate
    raise UserError("tfpipe bench tfx needs Python 3.10 or 3.9 for TFX 1.16 (it supports no later one): "
                    "pass --python PATH or set TFPIPE_TFX_PYTHON")


def ensure_environment(venv: Path, python: str) -> Path:
    """TFX's environment at ``venv`` (made once; remade when the pinned versions change): its python."""
    marker = venv / "tfpipe-requirements.txt"
    wanted = "\n".join(TFX_REQUIREMENTS)
    if marker.is_file() and marker.read_text() == wanted:
        return venv / "bin" / "python"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    # uv resolves TFX's dependency tree in seconds where pip backtracks for many minutes.
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "uv"], check=True)
    subprocess.run([str(venv / "bin" / "uv"), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                    *TFX_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return venv / "bin" / "python"


def write_tfx_table(directory: Path) -> int:
    """The processed penguins table of TFX's tutorials, from the same source tfpipe's penguins reads."""
    import importlib.resources

    import pandas as pd

    frame = pd.read_csv(str(importlib.resources.files("palmerpenguins").joinpath("data", "penguins.csv")))
    frame = frame.rename(columns={"bill_length_mm": "culmen_length_mm", "bill_depth_mm": "culmen_depth_mm"})
    frame = frame.dropna(subset=[*FEATURES, "species"])
    for column in FEATURES:
        frame[column] = (frame[column] - frame[column].min()) / (frame[column].max() - frame[column].min())
    frame["species"] = frame["species"].map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2})
    directory.mkdir(parents=True, exist_ok=True)
    frame[["species", *FEATURES]].to_csv(directory / "penguins_processed.csv", index=False)
    return len(frame)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TFPIPE_", "MLFLOW_", "AIRFLOW"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def _timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Seconds from start to exit, and the command's peak resident memory in MB (the largest
    process of its tree that it waited for)."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed (exit {process.returncode}); its log: {log}")
    return seconds, usage.ru_maxrss / 1024


def _pushed(store: Path) -> bool:
    return any(path.name == "saved_model.pb" for path in store.rglob("saved_model.pb"))


def _runners(tfx_python: Path, root: Path) -> dict:
    """The three variants, each a function of a fresh folder returning its seconds and peak MB."""
    from tasks.settings import Settings, airflow_environment

    bin_dir = Path(sys.executable).parent
    airflow_home = root / "airflow"

    def tfx(folder: Path) -> tuple[float, float]:
        seconds = _timed([str(tfx_python), str(PIPELINE_FILE), str(root / "tfx-data"), str(folder),
                          str(folder / "serving")], _clean_env(), folder.with_suffix(".log"))
        if not _pushed(folder / "serving"):
            raise RuntimeError(f"TFX pushed no model; its log: {folder.with_suffix('.log')}")
        return seconds

    def tfpipe_run(folder: Path) -> tuple[float, float]:
        seconds = _timed([str(bin_dir / "tfpipe"), "run", "penguins"], _clean_env(TFPIPE_HOME=str(folder)),
                         folder.with_suffix(".log"))
        if not _pushed(folder / "model_store"):
            raise RuntimeError(f"tfpipe pushed no model; its log: {folder.with_suffix('.log')}")
        return seconds

    def airflow_dags_test(folder: Path) -> tuple[float, float]:
        env = airflow_environment(Settings.from_env({"TFPIPE_HOME": str(folder)}),
                                  _clean_env(TFPIPE_HOME=str(folder), AIRFLOW_HOME=str(airflow_home)))
        seconds = _timed([str(bin_dir / "airflow"), "dags", "test", "penguins"], env, folder.with_suffix(".log"))
        if not _pushed(folder / "model_store"):
            raise RuntimeError(f"the DAG run pushed no model; its log: {folder.with_suffix('.log')}")
        return seconds

    return {"tfx": tfx, "tfpipe_run": tfpipe_run, "airflow_dags_test": airflow_dags_test}


def _migrate_airflow(root: Path) -> None:
    """Airflow's metadata database, made before the clock starts (a deployment has one)."""
    from tasks.settings import Settings, airflow_environment

    env = airflow_environment(Settings.from_env({"TFPIPE_HOME": str(root / "airflow-setup")}),
                              _clean_env(AIRFLOW_HOME=str(root / "airflow")))
    _timed([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env, root / "airflow-migrate.log")


def bench_tfx(repeat: int = 3, python: str | None = None, tfx_env: Path | None = None,
              variants: tuple[str, ...] = ("tfx", "tfpipe_run", "airflow_dags_test"),
              workdir: Path | None = None) -> dict:
    """Time the variants interleaved ``repeat`` times; medians, and each against TFX."""
    from tasks.settings import Settings

    venv = tfx_env or Settings.from_env().home / "bench" / "tfx-venv"
    tfx_python = ensure_environment(venv, find_python(python)) if "tfx" in variants else Path(sys.executable)
    root = Path(tempfile.mkdtemp(prefix="tfpipe-bench-tfx-", dir=workdir))
    rows = write_tfx_table(root / "tfx-data")
    if "airflow_dags_test" in variants:
        _migrate_airflow(root)
    runners = {name: fn for name, fn in _runners(tfx_python, root).items() if name in variants}
    times: dict[str, list[float]] = {name: [] for name in runners}
    peaks: dict[str, float] = {name: 0.0 for name in runners}
    for cycle in range(repeat):
        for name, run in runners.items():
            seconds, peak = run(root / f"{name}-{cycle}")
            times[name].append(seconds)
            peaks[name] = max(peaks[name], round(peak, 1))
            print(f"[tfpipe] bench tfx: cycle {cycle + 1}/{repeat}, {name} {seconds:.1f}s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return tfx_report(times, peaks, {"repeat": repeat, "tfx_rows": rows})


def tfx_report(times: dict[str, list[float]], peaks: dict[str, float], params: dict) -> dict:
    """The suite's result: per variant the median seconds and runs per hour; each variant's time
    over TFX's (``time_ratios``, what the targets bound) and its speed-up (``ratios``)."""
    measured = {name: {"seconds": stats_lib.median(values), "all_seconds": values, "peak_rss_mb": peaks[name]}
                for name, values in times.items()}
    pairs = [(name, "tfx") for name in times if name != "tfx" and "tfx" in times]
    result = suite_report("tfx", params, measured, {name: 3600 for name in times}, "runs/h", pairs)
    result["time_ratios"] = {f"{a}/{b}": round(measured[a]["seconds"] / measured[b]["seconds"], 3) for a, b in pairs}
    result["targets"] = {f"{name} <= {bound}": result["time_ratios"][name] <= bound
                         for name, bound in TARGETS.items() if name in result["time_ratios"]}
    result["machine"]["versions"]["tfx"] = TFX_REQUIREMENTS[0].split("==")[1]
    return result
