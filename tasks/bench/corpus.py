"""Real public tables run through the whole pipeline with the minimal YAML (GUIDE §6).

Every table ships inside a package's wheel (scikit-learn, statsmodels, vega_datasets,
palmerpenguins): nothing is downloaded at run time. Each entry is written to CSV exactly as
its package gives it (no cleaning, no index column) beside a YAML holding only
``data.source``, ``label`` and ``task``, then run as ``tfpipe run <yaml>`` runs it, in a fresh
``TFPIPE_HOME``. A failure is recorded with its step and the run goes on to the next entry.

    python -m tasks.bench.corpus [NAMES...] [--small] [--out FILE] [--keep DIR] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SMALL_ROWS = 2000  # entries under this many rows make up the quick ``--small`` subset
RUN_ID = "corpus"
CLASSIFICATION = ("binary", "multiclass")


@dataclass(frozen=True)
class Entry:
    """One real table and the pipeline a newcomer would write for it.

    Attributes:
        name: pipeline name (file names, MLflow experiment).
        package: the PyPI distribution whose wheel holds the table.
        module: the module to import.
        function: the loader, a dotted path inside ``module``.
        label: the label column.
        task: ``binary``, ``multiclass`` or ``regression``.
        rows: the table's row count, as the package ships it.
        note: what makes the table interesting.
        kwargs: keyword arguments of the loader.
        attribute: the attribute of the loader's result that holds the frame, if any.
    """

    name: str
    package: str
    module: str
    function: str
    label: str
    task: str
    rows: int
    note: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    attribute: str | None = None

    @property
    def loader(self) -> str:
        """How the table is loaded, as Python."""
        args = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return f"{self.module}.{self.function}({args})" + (f".{self.attribute}" if self.attribute else "")

    @property
    def small(self) -> bool:
        return self.rows < SMALL_ROWS

    def load(self):
        """The table as a pandas DataFrame, exactly as the package gives it."""
        target: Any = importlib.import_module(self.module)
        for part in self.function.split("."):
            target = getattr(target, part)
        result = target(**self.kwargs)
        return getattr(result, self.attribute) if self.attribute else result


def _sklearn(name: str, loader: str, label: str, task: str, rows: int, note: str, **kwargs) -> Entry:
    return Entry(name, "scikit-learn", "sklearn.datasets", loader, label, task, rows, note,
                 {"as_frame": True, **kwargs}, "frame")


def _statsmodels(name: str, dataset: str, label: str, task: str, rows: int, note: str) -> Entry:
    return Entry(name, "statsmodels", f"statsmodels.datasets.{dataset}", "load_pandas", label, task, rows, note,
                 attribute="data")


def _vega(name: str, dataset: str, label: str, task: str, rows: int, note: str) -> Entry:
    return Entry(name, "vega-datasets", "vega_datasets", f"local_data.{dataset}", label, task, rows, note)


def _penguins(name: str, loader: str, label: str, task: str, note: str) -> Entry:
    return Entry(name, "palmerpenguins", "palmerpenguins", loader, label, task, 344, note)


CORPUS: tuple[Entry, ...] = (
    _sklearn("iris", "load_iris", "target", "multiclass", 150,
             "150 rows; label written as class codes 0/1/2; one exact duplicate row"),
    _sklearn("wine", "load_wine", "target", "multiclass", 178,
             "178 rows; 13 numerics on very different scales (proline ~750, hue ~1)"),
    _sklearn("breast_cancer", "load_breast_cancer", "target", "binary", 569,
             "30 numeric columns whose names hold spaces ('mean radius'); 'area error' median 24.5, max 542"),
    _sklearn("diabetes", "load_diabetes", "target", "regression", 442,
             "raw (unscaled) units; sex written 1/2", scaled=False),
    _sklearn("diabetes_sex", "load_diabetes", "sex", "binary", 442,
             "numeric binary label written 1.0/2.0, not 0/1", scaled=False),
    _sklearn("digits", "load_digits", "target", "multiclass", 1797,
             "10 classes; 64 pixel columns, 3 of them always 0 (constant features)"),
    _penguins("penguins", "load_penguins", "species", "multiclass",
              "2 rows with every measurement missing, 11 without sex; year as a number"),
    _penguins("penguins_sex", "load_penguins", "sex", "binary",
              "text label female/male; 11 rows without a label"),
    _penguins("penguins_clutch", "load_penguins_raw", "Clutch Completion", "binary",
              "yes/no label (308 Yes, 36 No); names with spaces, '(mm)' and '/'; "
              "free text Comments empty in 290 rows; an ID with 190 values; dates as text"),
    _vega("cars", "cars", "Miles_per_Gallon", "regression", 406,
          "8 rows without a label, 6 without Horsepower; free-text Name (~300 values); Year as a date"),
    _vega("cars_origin", "cars", "Origin", "multiclass", 406,
          "text label USA/Europe/Japan (63% USA); missing numerics; free-text Name"),
    _vega("barley", "barley", "year", "binary", 120,
          "numeric binary label written 1931/1932; 120 rows, two text features"),
    _vega("seattle_weather", "seattle_weather", "weather", "multiclass", 1461,
          "rare classes (snow 23, drizzle 54 of 1461); precipitation mostly 0 with a long tail; a date column"),
    _statsmodels("anes96", "anes96", "vote", "binary", 944,
                 "binary label written as floats 0.0/1.0; one duplicate row; "
                 "popul median 22, max 7,300, beside its log"),
    _statsmodels("anes96_party", "anes96", "PID", "multiclass", 944,
                 "7 classes written as floats 0.0..6.0; smallest class 37 rows"),
    _statsmodels("fair", "fair", "affairs", "regression", 6366,
                 "1,039 exact duplicate rows; label 0 for two thirds, tail to 57.6 (heavy outliers)"),
    _statsmodels("randhie", "randhie", "mdvis", "regression", 20190,
                 "20,190 rows, 11,065 exact duplicates; count label, median 1, max 77"),
    _statsmodels("randhie_idp", "randhie", "idp", "binary", 20190,
                 "20,190 rows, most of them duplicates; integer 0/1 label"),
)

BY_NAME: dict[str, Entry] = {entry.name: entry for entry in CORPUS}


def select(names: Sequence[str] = (), small: bool = False) -> list[Entry]:
    """The entries named (all when none), only the small ones with ``small``.

    Raises:
        KeyError: a name that is not in the corpus, with the names that are.
    """
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise KeyError(f"not in the corpus: {', '.join(unknown)}; entries: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[name] for name in names] if names else list(CORPUS)
    return [entry for entry in chosen if entry.small] if small else chosen


def write_entry(entry: Entry, folder: Path) -> Path:
    """Write ``entry``'s table as ``<folder>/<name>.csv`` and the minimal YAML beside it.

    Returns:
        The YAML's path: ``data.source`` (absolute), ``label`` and ``task``, nothing else.
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = (folder / f"{entry.name}.csv").resolve()
    entry.load().to_csv(source, index=False)
    config = {"data": {"source": str(source)}, "label": entry.label, "task": entry.task}
    path = folder / f"{entry.name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_entry(entry: Entry, root: Path) -> dict[str, Any]:
    """Run ``entry`` as ``tfpipe run`` does, in a fresh ``TFPIPE_HOME`` under ``root/<name>``.

    The settings come from that home alone (not from this process's ``MLFLOW_TRACKING_URI`` or
    ``TFPIPE_*`` variables), so every entry's artifacts, tracking and model store stay in it.
    Never raises for a failure of the pipeline: the error and the step it happened in are
    part of the returned record (see :func:`summarize`).
    """
    from tasks.context import make_context
    from tasks.pipeline import run_pipeline
    from tasks.settings import Settings

    folder = root / entry.name
    records: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    stage, error = "load", None
    started = time.perf_counter()

    def on_step(name: str, record: dict[str, Any], took: float) -> None:
        records[name], seconds[name] = record, round(took, 2)

    try:
        pipeline = write_entry(entry, folder)
        stage = "config"
        settings = Settings.from_env({"TFPIPE_HOME": str(folder / "home")})
        ctx = make_context(pipeline, run_id=RUN_ID, settings=settings)
        stage = "pipeline"
        run_pipeline(ctx, on_step=on_step)
        stage = "second run"
        again = run_pipeline(make_context(pipeline, run_id=f"{RUN_ID}-2", settings=settings),
                             until="validate_examples")
        records["second_run"] = again["validate_examples"]
    except Exception as exc:  # noqa: BLE001 - every entry runs; the error is part of its record
        error = exc
    return summarize(entry, records, seconds, error, stage, time.perf_counter() - started)


def _failed_step(records: dict[str, Any], stage: str) -> str:
    from tasks.steps import STEPS

    if stage == "second run":
        return "the second run (ingest and validate again)"
    if stage != "pipeline":
        return stage
    return next((step for step in STEPS if step not in records), STEPS[-1])


def summarize(entry: Entry, records: dict[str, Any], seconds: dict[str, float], error: BaseException | None,
              stage: str, took: float) -> dict[str, Any]:
    """One entry's result: counts, validation, evaluation and the error, if any.

    Args:
        entry: the corpus entry.
        records: step name to the record the step returned (the steps that completed).
        seconds: step name to its duration.
        error: what the run raised, or None.
        stage: ``load``, ``config`` or ``pipeline``: how far the run got before its steps.
        took: seconds for the whole entry (writing the table included).
    """
    counts = (records.get("ingest_examples") or {}).get("counts") or {}
    total = sum(counts.values())
    blessing = records.get("evaluate_model") or {}
    metrics = blessing.get("metrics") or {}
    keys = ("accuracy", "auc") if entry.task in CLASSIFICATION else ("rmse", "r2")
    failed_checks = [reason for check, reason in zip(blessing.get("checks", []), blessing.get("reasons", []))
                     if check.get("passed") is False]
    lines = str(error).strip().splitlines() if error is not None else []
    return {
        "rows": entry.rows,
        "task": entry.task,
        "label": entry.label,
        "ok": error is None,
        "failed_step": _failed_step(records, stage) if error is not None else None,
        "error": f"{type(error).__name__}: {lines[0] if lines else ''}" if error is not None else None,
        "error_lines": lines[:8],
        "examples": counts,
        "eval_examples": counts.get("eval"),
        "eval_share": round(counts["eval"] / total, 4) if total else None,
        "anomalies": (records.get("validate_examples") or {}).get("anomalies"),
        "second_run_anomalies": (records.get("second_run") or {}).get("anomalies"),
        "trivial": (blessing.get("trivial") or {}).get("metrics"),
        "metrics": {key: metrics[key] for key in keys if key in metrics},
        "blessed": blessing.get("blessed"),
        "failed_checks": failed_checks,
        "pushed": "push_model" in records,
        "step_seconds": seconds,
        "seconds": round(took, 1),
    }


def run_corpus(entries: Iterable[Entry], root: Path, keep: bool = False,
               on_entry: Callable[[Entry, dict[str, Any]], None] | None = None) -> dict[str, dict[str, Any]]:
    """Run every entry, each in its own folder under ``root``; never stops at a failure.

    Args:
        entries: the entries to run.
        root: where each entry's table, YAML and ``TFPIPE_HOME`` go.
        keep: leave each entry's folder in place (else it is removed once the entry ran).
        on_entry: told each entry's result as soon as it is known.

    Returns:
        Entry name to its result (:func:`summarize`).
    """
    results: dict[str, dict[str, Any]] = {}
    for entry in entries:
        results[entry.name] = run_entry(entry, root)
        if not keep:
            shutil.rmtree(root / entry.name, ignore_errors=True)
        if on_entry is not None:
            on_entry(entry, results[entry.name])
    return results


def _versions() -> dict[str, str]:
    from tasks.bench.common import versions

    return versions("tensorflow", "tensorflow-data-validation", "tfx-bsl", "apache-beam", "pyarrow", "pandas", "numpy",
                    "mlflow", "scikit-learn", "statsmodels", "vega-datasets", "palmerpenguins", "tfpipe")


def report(results: dict[str, dict[str, Any]], small: bool) -> dict[str, Any]:
    """The benchmark contract's shape (GUIDE §4): suite, params, machine, and per-entry results."""
    from tasks.settings import usable_cpus

    return {
        "suite": "corpus",
        "params": {"entries": list(results), "small": small, "small_rows": SMALL_ROWS,
                   "config": "minimal YAML: data.source, label, task"},
        "machine": {"cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "platform": platform.platform(),
                    "python": platform.python_version(), "versions": _versions()},
        "summary": {"entries": len(results), "ran_through": sum(r["ok"] for r in results.values()),
                    "failed": sum(not r["ok"] for r in results.values()),
                    "blessed": sum(bool(r["blessed"]) for r in results.values()),
                    "pushed": sum(r["pushed"] for r in results.values())},
        "results": results,
    }


_SHORT = {"accuracy": "acc", "auc": "auc", "rmse": "rmse", "r2": "r2"}
_HEADER = ("entry", "task", "rows", "eval", "eval %", "trivial", "metric", "metric", "blessed", "seconds", "result")


def _metric(name: str, metrics: dict[str, float] | None) -> str:
    if not metrics or name not in metrics:
        return "-"
    return f"{_SHORT[name]} {metrics[name]:.4g}"


def _row(name: str, result: dict[str, Any]) -> tuple[str, ...]:
    first, second = ("accuracy", "auc") if result["task"] in CLASSIFICATION else ("rmse", "r2")
    share = result["eval_share"]
    blessed = {True: "yes", False: "no", None: "-"}[result["blessed"]]
    outcome = "ok" if result["ok"] else f"FAILED at {result['failed_step']}"
    return (name, result["task"], f"{result['rows']:,}",
            "-" if result["eval_examples"] is None else f"{result['eval_examples']:,}",
            "-" if share is None else f"{100 * share:.1f}", _metric(first, result["trivial"]),
            _metric(first, result["metrics"]), _metric(second, result["metrics"]), blessed,
            f"{result['seconds']:.0f}", outcome)


def format_table(result: dict[str, Any]) -> str:
    """The results as a table (two spaces between columns), then each failure's error."""
    rows = [_HEADER] + [_row(name, entry) for name, entry in result["results"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
    numeric = {2, 3, 4, 9}
    lines = [f"tfpipe corpus  cpus={result['machine']['cpus']}  {json.dumps(result['summary'])}", ""]
    for row in rows:
        cells = [cell.rjust(width) if i in numeric else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    failures = [(name, r) for name, r in result["results"].items() if not r["ok"]]
    if failures:
        lines += ["", "failures:"]
        for name, entry in failures:
            lines.append(f"  {name} ({entry['failed_step']}): {entry['error']}")
            lines += [f"      {line}" for line in entry["error_lines"][1:4]]
    unblessed = [(name, r) for name, r in result["results"].items() if r["blessed"] is False]
    if unblessed:
        lines += ["", "not blessed:"]
        lines += [f"  {name}: {'; '.join(r['failed_checks']) or 'no failed check recorded'}" for name, r in unblessed]
    return "\n".join(lines)


def _describe(entries: Iterable[Entry]) -> str:
    lines = []
    for entry in entries:
        lines.append(f"{entry.name:<16} {entry.task:<10} {entry.rows:>7,} rows  label {entry.label!r}"
                     f"{'  (small)' if entry.small else ''}")
        lines.append(f"{'':<16} {entry.package}: {entry.loader}")
        lines.append(f"{'':<16} {entry.note}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.bench.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="entries to run (default: all)")
    parser.add_argument("--small", action="store_true", help=f"only the entries under {SMALL_ROWS:,} rows")
    parser.add_argument("--out", help="write the results as JSON (the benchmark contract) to this file")
    parser.add_argument("--keep", metavar="DIR", help="write each entry's table, YAML and home here and keep them")
    parser.add_argument("--list", action="store_true", help="describe the entries and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        entries = select(args.names, args.small)
    except KeyError as error:
        print(f"tasks.bench.corpus: {error.args[0]}", file=sys.stderr)
        return 2
    if args.list:
        print(_describe(entries))
        return 0
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tfpipe-corpus-"))
    total = len(entries)

    def on_entry(entry: Entry, result: dict[str, Any]) -> None:
        outcome = "ok" if result["ok"] else f"FAILED at {result['failed_step']}: {result['error']}"
        print(f"[{len(done) + 1}/{total}] {entry.name}: {outcome} ({result['seconds']:.0f}s)", flush=True)
        done.append(entry.name)

    done: list[str] = []
    try:
        result = report(run_corpus(entries, root, keep=bool(args.keep), on_entry=on_entry), args.small)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(format_table(result), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
