"""The ``tfpipe`` command. Heavy libraries are imported only by the subcommand that needs them,
so ``tfpipe --help`` and config errors answer at once.

    tfpipe run PIPELINE [--until STEP] [--set key=value ...] [--run-id ID]
    tfpipe check PIPELINE                  check a pipeline's config and a sample of its data
    tfpipe rerun PIPELINE RUN_ID [--anyway]  run a past run again; say whether data, code and model are the same
    tfpipe summary PIPELINE [--run-id ID]  what a pipeline run did (from MLflow)
    tfpipe demo                            run the penguins DAG through Airflow, then summarize
    tfpipe datagen OUT [--rows N] ...      synthetic tabular data (CSV or Parquet)
    tfpipe bench SUITE [--rows N] [--out FILE]   benchmarks (ours, reference, floor): ingest, validate, input,
                                           train, batch, graph, optimize, gpu, tfx
    tfpipe train-job --name N --image I --request URI   an Indexed Job + headless Service: training as pods
    tfpipe tfjob --name N --image I --request URI   the same as a Kubeflow TFJob (training operator v1)
    tfpipe schema PIPELINE [--curate|--reset]  the schema in force; --curate copies the recorded one beside the
                                           config; --reset discards it (and the drift baseline)
    tfpipe rollback MODEL [--to VERSION] [--reason TEXT]   move the champion back and update the serving config
    tfpipe history MODEL [--version N]     every champion change and approval of a model: who, when, why
    tfpipe serving-sync DIR [--interval S] mirror the model store into DIR for TensorFlow Serving
    tfpipe serving-check MODEL             check what serves a model (champion, config, files, answers)
    tfpipe airflow ARGS...                 the airflow command with this project's settings
    tfpipe mlflow ARGS...                  the mlflow command with this project's settings
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tasks.config import ConfigError, load_pipeline, parse_overrides
from tasks.steps import STEPS
from tasks.settings import Settings, airflow_environment
BENCH_ROWS = {"ingest": 1_000_000, "validate": 1_000_000, "input": 1_000_000, "train": 1_000_000, "optimize": 100_000,
              "batch": 50_000, "graph": 100_000, "gpu": 1_000_000}
BENCH_EXPERIMENT = "tfpipe-bench"


def _bin(name: str) -> str:
    """A console script of this environment (beside the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _cmd_run(args: argparse.Namespace) -> int:
    from tasks.context import make_context
    from tasks.pipeline import run_pipeline
    from tasks.reuse import reused_from

    settings = Settings.from_env()
    run_id = args.run_id or f"cli__{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H-%M-%S')}"
    ctx = make_context(args.pipeline, run_id=run_id, settings=settings, overrides=parse_overrides(args.set or []))
    durations: dict[str, float] = {}
    from tasks.progress import install

    bar = install()  # progress bars on a terminal; nothing when the output is a file or a pipe

    def on_step(name, record, seconds):
        durations[name] = seconds
        if bar is not None:
            bar.clear()
        reused = reused_from(ctx.run_id, name)
        print(f"[tfpipe] {name} " + (f"reused from run {reused} (its inputs, config and code are unchanged)"
                                     if reused else f"done in {seconds:.1f}s"), flush=True)

    print(f"[tfpipe] pipeline {ctx.config.name}, run {run_id}", flush=True)
    results = run_pipeline(ctx, until=args.until, on_step=on_step)
    print(format_summary(ctx.config.name, run_id, durations, results, settings))
    return 0


def _cmd_rerun(args: argparse.Namespace) -> int:
    from tasks import rerun
    from tasks.pipeline import run_pipeline

    settings = Settings.from_env()
    new_run_id = args.run_id or f"rerun__{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H-%M-%S')}"
    ctx, entry, changed = rerun.prepare(settings, args.pipeline, args.run, new_run_id, anyway=args.anyway)
    print(f"[tfpipe] re-running {args.pipeline} run {args.run} as {new_run_id}", flush=True)
    results = run_pipeline(ctx, until=args.until)
    report = rerun.compare(settings, entry, results)
    print(rerun.format_report(args.run, new_run_id, report, changed))
    hint = rerun.trigger_hint(entry)
    if hint:
        print(f"  again {hint}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from tasks.context import make_context
    from tasks.pipeline import schema_in_force
    from tasks.preflight import check_data, format_findings

    config = load_pipeline(args.pipeline, parse_overrides(args.set or []), Settings.from_env().pipelines_dir)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    gate = ", ".join(f"{metric} {bounds.model_dump(exclude_none=True)}" for metric, bounds in config.gate.metrics.items())
    print(f"[tfpipe] pipeline {config.name}: task {config.task.value}, label {config.label!r}; gate: {gate}")
    print("  ok       the config is valid (tfpipe check --json prints it whole)")
    if args.config_only:
        return 0
    ctx = make_context(args.pipeline, run_id="check", settings=Settings.from_env(),
                       overrides=parse_overrides(args.set or []))
    findings = check_data(config, schema_in_force(ctx), config.name)
    print(format_findings(findings))
    problems = sum(f.level == "problem" for f in findings)
    print(f"[tfpipe] {problems} problem(s)" if problems else "[tfpipe] ready to run: tfpipe run " + args.pipeline)
    return 1 if problems else 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from tasks.tracking import MlflowTracking

    settings = Settings.from_env()
    name = load_pipeline(args.pipeline, pipelines_dir=Settings.from_env().pipelines_dir).name
    tracking = MlflowTracking(settings.tracking_uri, settings.mlflow_artifact_location)
    run = tracking.pipeline_summary(name, args.run_id)
    if run is None:
        print(f"no runs of pipeline {name} in {settings.tracking_uri}", file=sys.stderr)
        return 1
    print(format_summary(name, run["run_id"], run["durations"], run["results"], settings, run["status"]))
    return 0 if run["status"] == "FINISHED" else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    env = airflow_environment(settings)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = _bin("airflow")
    if not (settings.airflow_home / "airflow.db").exists():
        print("[tfpipe] initializing the Airflow database (first run only)", flush=True)
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"[tfpipe] running DAG {args.pipeline} through Airflow (airflow dags test)", flush=True)
    started = time.perf_counter()
    log = settings.home / "demo.log"
    with log.open("w") as handle:
        proc = subprocess.run([airflow, "dags", "test", args.pipeline], env=env, stdout=handle,
                              stderr=subprocess.STDOUT)
    print(f"[tfpipe] DAG run finished in {time.perf_counter() - started:.0f}s (Airflow log: {log})")
    summary = _cmd_summary(argparse.Namespace(pipeline=args.pipeline, run_id=None))
    if proc.returncode != 0:
        print(f"[tfpipe] the DAG run failed; see {log}", file=sys.stderr)
        return proc.returncode
    return summary


def _cmd_schema(args: argparse.Namespace) -> int:
    from tasks import artifacts, storage
    from tasks.context import curated_schema_path
    from tasks.context import make_context

    settings = Settings.from_env()
    ctx = make_context(args.pipeline, run_id="schema", settings=settings)
    curated = curated_schema_path(ctx)
    recorded = artifacts.recorded_schema_uri(settings.artifact_root, ctx.config.name)
    if args.reset:
        from tasks.validate import reset_recorded

        removed = reset_recorded(recorded, artifacts.baseline_statistics_uri(settings.artifact_root, ctx.config.name))
        if not removed:
            print(f"[tfpipe] {ctx.config.name} has no recorded schema or drift baseline: nothing to reset")
            return 0
        print(f"[tfpipe] removed {', '.join(removed)}: the next run that passes validation and training "
              "records a new schema" + (f" (the curated schema {curated} stays in force)" if curated.is_file() else ""))
        return 0
    if curated.is_file() and not args.curate:
        print(f"# curated schema (authoritative): {curated}")
        print(curated.read_text(encoding="utf-8"), end="")
        return 0
    if not storage.exists(recorded):
        print(f"no schema yet for {ctx.config.name}: the first run that passes validation records one "
              f"at {recorded}", file=sys.stderr)
        return 1
    text = storage.read_bytes(recorded).decode("utf-8")
    if not args.curate:
        print(f"# recorded schema: {recorded}")
        print(text, end="")
        return 0
    if curated.exists():
        print(f"{curated} exists; edit it in place (not overwritten)", file=sys.stderr)
        return 1
    curated.write_text(f"# Curated from {recorded}; authoritative from now on.\n{text}", encoding="utf-8")
    print(f"[tfpipe] wrote {curated} from the recorded schema of {Path(ctx.pipeline).name}; "
          "edit it (ranges, presence, domains) and commit it beside the config")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from tasks.bench.common import format_table, write

    rows = args.rows or BENCH_ROWS.get(args.suite, 0)
    if args.suite == "tfx":
        from tasks.bench.end_to_end import bench_tfx

        result = bench_tfx(args.repeat, python=args.python, tfx_env=Path(args.tfx_env) if args.tfx_env else None)
    elif args.suite == "ingest":
        from tasks.bench.ingest import bench_ingest

        result = bench_ingest(rows, args.columns, args.repeat, args.format)
    elif args.suite == "validate":
        from tasks.bench.validate import bench_validate

        result = bench_validate(rows, args.columns, args.repeat)
    elif args.suite == "gpu":
        from tasks.bench.gpu import bench_gpu

        result = bench_gpu(rows, args.columns, args.repeat, epochs=args.epochs, batch_size=args.batch_size or 16384)
    elif args.suite == "graph":
        from tasks.bench.graph import bench_graph

        result = bench_graph(rows, args.columns, args.repeat, epochs=args.epochs, batch_size=args.batch_size or 1024)
    elif args.suite == "optimize":
        from tasks.bench.optimize import bench_optimize

        result = bench_optimize(rows, args.columns, args.repeat, throughput_batch=args.batch_size or 1024)
    else:
        from tasks.bench import training as bench_training

        if args.suite == "input":
            result = bench_training.bench_input(rows, args.columns, args.repeat, batch_size=args.batch_size or 1024)
        elif args.suite == "batch":
            result = bench_training.bench_batch(rows, args.columns, args.repeat, epochs=args.epochs,
                                                batch_size=args.batch_size or 64)
        else:
            result = bench_training.bench_train(rows, args.columns, args.repeat, epochs=args.epochs,
                                                batch_size=args.batch_size or 16384, autotune=not args.no_autotune)
    write(result, args.out)
    table = format_table(result)
    print(table)
    if args.out:
        print(f"\n[tfpipe] wrote {args.out}")
    if not args.no_mlflow:
        from tasks.tracking import log_benchmark

        settings = Settings.from_env()
        if settings.tracking_uri.startswith("sqlite:"):
            settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        run_id = log_benchmark(settings.tracking_uri, result, table, settings.mlflow_artifact_location)
        print(f"[tfpipe] logged to MLflow: experiment {BENCH_EXPERIMENT}, run {run_id}")
    return 0


def _cmd_tfjob(args: argparse.Namespace) -> int:
    import yaml

    from tasks.training.launcher import tfjob_manifest

    manifest = tfjob_manifest(args.name, args.image, args.workers, args.request, namespace=args.namespace,
                              cpu=args.cpu, memory=args.memory, gpus=args.gpus,
                              parameter_servers=args.parameter_servers)
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def _cmd_train_job(args: argparse.Namespace) -> int:
    import yaml

    from tasks.training.kubernetes import job_manifests

    try:
        manifests = job_manifests(args.name, args.image, args.workers, args.request, namespace=args.namespace,
                                  cpu=args.cpu, memory=args.memory, gpus=args.gpus,
                                  parameter_servers=args.parameter_servers)
    except ValueError as error:
        print(f"[tfpipe] {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(manifests, sort_keys=False), end="")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from tasks.release_steps import rollback_model

    settings = Settings.from_env()
    by = args.by or f"cli:{os.environ.get('USER', 'unknown')}"
    done = rollback_model(settings, args.model, args.to, by=by, serving_timeout=args.serving_timeout,
                          reason=args.reason or "rollback")
    print(f"[tfpipe] {args.model}: champion v{done['from_version']} -> v{done['to_version']} in {settings.model_store}")
    print(f"[tfpipe] serving config: {done['models_config']}")
    if "tf_serving" in done:
        print(f"[tfpipe] TensorFlow Serving at {settings.serving_url} serves v{done['to_version']}")
    mlflow = done["mlflow"]
    alias = (f"alias champion -> registry v{mlflow['registry_version']}" if mlflow["registry_version"]
             else "no registry version carries this store version; alias unchanged")
    print(f"[tfpipe] MLflow: {alias}; logged as run {mlflow['run_id']}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from tasks.artifacts import checked_name
    from tasks.release import audit

    settings = Settings.from_env()
    events = audit.history(settings.model_store, checked_name(args.model, "model name"), args.version)
    print(json.dumps(events, indent=2) if args.json else audit.format_history(args.model, events))
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    """``tfpipe trace``: what the profiles of training steps say (train.profile_steps)."""
    import tempfile

    from tasks.tables import format_table
    from tasks.training.profile import find_traces, summarize

    with tempfile.TemporaryDirectory(prefix="tfpipe-trace-") as scratch:
        folder = _trace_folder(args.where, Path(scratch))
        traces = find_traces(folder)
        if not traces:
            print(f"tfpipe: no profile (*.xplane.pb) under {args.where}: set train.profile_steps and train again",
                  file=sys.stderr)
            return 1
        summaries = [summarize(path) for path in traces]
    if args.json:
        print(json.dumps([s.to_dict(args.top) for s in summaries], indent=2))
        return 0
    for s in summaries:
        print(f"{s.path}\n  {s.steps} calls of the step function, {s.step_seconds:.3f} s; waiting for input "
              f"{s.input_seconds:.3f} s: input-bound share {s.input_bound_share:.1%}")
        total = sum(seconds for _, seconds, _ in s.ops) or 1.0
        print(format_table(("op", "seconds", "share", "count"),
                           [(op, f"{sec:.4f}", f"{sec / total:.1%}", n) for op, sec, n in s.ops[:args.top]],
                           indent=2, right=(1, 2, 3)))
    return 0


def _trace_folder(where: str, scratch: Path) -> Path:
    """A local folder or file, or ``runs:/<run id>/<path>`` (an MLflow run's artifacts, downloaded)."""
    import re

    from tasks.context import tracking_for

    if not where.startswith("runs:/"):
        return Path(where)
    match = re.fullmatch(r"runs:/([0-9a-f]{32})(?:/([\w.\-/]*))?", where)
    if match is None or ".." in (match.group(2) or "").split("/"):
        raise ConfigError(f"{where!r} is not runs:/<run id>/<artifact path> (the run id is 32 hex digits)")
    tracking = tracking_for(Settings.from_env())
    return Path(tracking.client.download_artifacts(match.group(1), match.group(2) or "", str(scratch)))


def _cmd_serving_sync(args: argparse.Namespace) -> int:
    from tasks.release.sync import sync_store

    settings = Settings.from_env()
    source = args.store or settings.model_store
    while True:
        report = sync_store(source, Path(args.directory), args.model or None)
        for name, added in sorted(report.added.items()):
            print(f"[tfpipe] {name}: added versions {added}", flush=True)
        for name, removed in sorted(report.removed.items()):
            print(f"[tfpipe] {name}: removed versions {removed}", flush=True)
        for name, repaired in sorted(report.repaired.items()):
            print(f"[tfpipe] {name}: local copies of {repaired} differed from the store, downloaded again", flush=True)
        for name, problems in sorted(report.skipped.items()):
            for problem in problems:
                print(f"[tfpipe] {name}: NOT synced {problem}", file=sys.stderr, flush=True)
        served = ", ".join(f"{k} v{v}" for k, v in sorted(report.champions.items())) or "nothing"
        print(f"[tfpipe] {report.config}: serving {served}", flush=True)
        if not args.interval:
            return 1 if report.skipped else 0
        time.sleep(args.interval)


def _cmd_serving_check(args: argparse.Namespace) -> int:
    from tasks.release_steps import check_serving

    settings = Settings.from_env()
    report = check_serving(settings, args.model, by=f"cli:{os.environ.get('USER', 'unknown')}",
                           timeout=args.serving_timeout)
    print(f"[tfpipe] {args.model} v{report['version']}: in {report['models_config']}, {report['files']} files "
          f"match their manifest, {report['requests']} warm-up requests answered")
    if "tf_serving" in report:
        print(f"[tfpipe] TensorFlow Serving at {settings.serving_url}: AVAILABLE, same answers")
    print(f"[tfpipe] MLflow run {report['mlflow_run_id']}")
    return 0


def _cmd_datagen(args: argparse.Namespace) -> int:
    from tasks.bench.datagen import generate, pipeline_yaml

    started = time.perf_counter()
    result = generate(args.out, rows=args.rows, columns=args.columns, task=args.task, seed=args.seed,
                      missing=args.missing, drift=args.drift, corrupt=args.corrupt, data_format=args.format)
    size = Path(args.out).stat().st_size
    print(f"[tfpipe] wrote {result['rows']} rows x {len(result['columns'])} columns ({result['format']}, "
          f"{size / 1e6:.1f} MB) to {args.out} in {time.perf_counter() - started:.1f}s")
    if args.pipeline:
        path = Path(args.pipeline)
        path.write_text(pipeline_yaml(path.stem, str(Path(args.out).resolve()), args.task))
        print(f"[tfpipe] wrote the pipeline config {path}; run it with: tfpipe run {path}")
    return 0


def _exec(tool: str, args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    env = airflow_environment(settings)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    argv = list(args.args)
    if tool == "mlflow" and argv[:1] in (["ui"], ["server"]) and "--backend-store-uri" not in argv:
        argv += ["--backend-store-uri", settings.tracking_uri]
    os.execvpe(_bin(tool), [tool, *argv], env)
    return 0  # pragma: no cover - exec does not return


def format_summary(pipeline: str, run_id: str, durations: dict[str, float], results: dict,
                   settings: Settings, status: str | None = None) -> str:
    lines = ["", f"tfpipe summary: pipeline {pipeline}, run {run_id}" + (f" ({status})" if status else ""), ""]
    lines.append("  step                  seconds")
    for step in STEPS:
        if step in durations:
            lines.append(f"  {step:<20}{durations[step]:>9.1f}")
        else:
            lines.append(f"  {step:<20}{'skipped':>9}")
    evaluation = results.get("evaluate_model")
    if evaluation:
        from tasks.artifacts import Blessing
        from tasks.evaluate import format_checks

        blessing = Blessing.of(evaluation)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(blessing.metrics.items()) if k != "example_count")
        lines += ["", f"eval metrics: {metrics} ({int(blessing.metrics.get('example_count', 0))} examples)"]
        lines += format_checks(blessing).splitlines()
    optimized = results.get("optimize_model")
    if optimized:
        from tasks.artifacts import OptimizedArtifact
        from tasks.optimize import format_report

        lines += ["", "optimized variants (latency at batch 1, throughput at a large batch):"]
        lines += [f"  {line}" for line in format_report(OptimizedArtifact.of(optimized).report).splitlines()]
    pushed = results.get("push_model")
    if pushed and pushed.get("approval") == "missing":
        lines += ["", f"pushed: nothing: {pushed['reasons'][0]}"]
    elif pushed and pushed.get("identical_to") is not None:
        lines += ["", f"pushed: nothing: the weights equal those of the champion v{pushed['identical_to']}, which "
                      "keeps serving (push.skip_identical)"]
    elif pushed and pushed.get("pushed") is False:
        lines += ["", "pushed: nothing (gated again against the champion another run promoted meanwhile, "
                      "the model was not blessed)"]
    elif pushed:
        lines += ["", f"pushed: version {pushed['version']} at {pushed['uri']} "
                      f"(MLflow registry: {pipeline} v{pushed.get('registry_version')})"]
        if pushed.get("champion") is not None:
            lines.append(f"champion: version {pushed['champion']} (served through {settings.model_store}/models.config)")
    elif evaluation:
        lines += ["", "pushed: nothing (the model was not blessed)"]
    lines += [
        "",
        "browse:",
        f"  MLflow:  make mlflow   then open {_experiment_link(settings, pipeline)}",
        "  Airflow: make airflow  then open http://127.0.0.1:8080  (DAG "
        f"'{pipeline}'; login in {settings.airflow_home}/simple_auth_manager_passwords.json.generated)",
        f"  store:   {settings.model_store}",
    ]
    return "\n".join(lines)


def _experiment_link(settings: Settings, pipeline: str) -> str:
    """The experiment's runs in the MLflow UI's model-training view (the root page when unknown)."""
    from tasks.tracking import MlflowTracking, experiment_url

    try:
        experiment = MlflowTracking(settings.tracking_uri).client.get_experiment_by_name(pipeline)
    except Exception:  # noqa: BLE001 - a link is a convenience: the summary prints without it
        experiment = None
    if experiment is None:
        return f"{settings.mlflow_ui_url}  (experiment '{pipeline}')"
    return experiment_url(settings.mlflow_ui_url, experiment.experiment_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfpipe", description="Tabular data to a served TensorFlow model.")
    sub = parser.add_subparsers(dest="command", required=True)
    _pipeline_commands(sub)
    _tool_commands(sub)
    _release_commands(sub)
    for tool in ("airflow", "mlflow"):
        p = sub.add_parser(tool, help=f"run {tool} with this project's settings", add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda a, tool=tool: _exec(tool, a))
    return parser


def _pipeline_commands(sub) -> None:
    """run, check, summary, demo."""
    run = sub.add_parser("run", help="run a pipeline's steps in this process, without Airflow")
    run.add_argument("pipeline", help="a name in the pipelines directory (TFPIPE_PIPELINES_DIR, default dags/pipelines/) or a path to a YAML file")
    run.add_argument("--until", choices=STEPS, help="stop after this step")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--run-id", help="run id (default: cli__<UTC time>)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="check a pipeline's config and a sample of its data, without running it")
    check.add_argument("pipeline")
    check.add_argument("--set", action="append", metavar="KEY=VALUE")
    check.add_argument("--config-only", action="store_true", help="do not read the data")
    check.add_argument("--json", action="store_true", help="print the whole config, defaults included, as JSON")
    check.set_defaults(func=_cmd_check)

    summary = sub.add_parser("summary", help="summarize a pipeline run from MLflow")
    summary.add_argument("pipeline")
    summary.add_argument("--run-id", help="default: the latest run")
    summary.set_defaults(func=_cmd_summary)

    again = sub.add_parser("rerun", help="run a past run again from what it recorded; report whether its data, "
                                         "code, config and model are the same")
    again.add_argument("pipeline", help="the pipeline's name")
    again.add_argument("run", help="the run id to re-run (a DAG run id, or a tfpipe run's --run-id)")
    again.add_argument("--run-id", help="the new run's id (default: rerun__<time>)")
    again.add_argument("--until", choices=STEPS, help="stop after this step")
    again.add_argument("--anyway", action="store_true",
                       help="run even when the pipeline file no longer resolves to the recorded config")
    again.set_defaults(func=_cmd_rerun)
    demo = sub.add_parser("demo", help="run a pipeline DAG once through Airflow and summarize it")
    demo.add_argument("pipeline", nargs="?", default="penguins")
    demo.set_defaults(func=_cmd_demo)


def _tool_commands(sub) -> None:
    """datagen, bench, train-job, tfjob."""
    datagen = sub.add_parser("datagen", help="write synthetic tabular data for benchmarks and tests")
    datagen.add_argument("out", help="output file: .csv or .parquet")
    datagen.add_argument("--rows", type=int, default=1_000_000)
    datagen.add_argument("--columns", type=int, default=20, help="columns including the label (default 20)")
    datagen.add_argument("--task", choices=("binary", "multiclass", "regression"), default="binary")
    datagen.add_argument("--format", choices=("auto", "csv", "parquet"), default="auto")
    datagen.add_argument("--seed", type=int, default=0)
    datagen.add_argument("--missing", type=float, default=0.02, help="fraction of feature values left empty")
    datagen.add_argument("--drift", type=float, default=0.0, help="shift distributions (0: none, 1: strong)")
    datagen.add_argument("--corrupt", type=float, default=0.0, help="fraction of rows with one defect each")
    datagen.add_argument("--pipeline", metavar="YAML", help="also write a pipeline config for the data")
    datagen.set_defaults(func=_cmd_datagen)

    bench = sub.add_parser("bench", help="benchmark a step against its reference and floor (GUIDE section 4)")
    bench.add_argument("suite", choices=("ingest", "validate", "input", "train", "batch", "graph", "optimize",
                                                 "gpu", "tfx"))
    bench.add_argument("--rows", type=int, help=f"generated rows (default: {BENCH_ROWS})")
    bench.add_argument("--columns", type=int, default=20)
    bench.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (median reported)")
    bench.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="source format (ingest)")
    bench.add_argument("--epochs", type=int, default=3, help="epochs per variant (train)")
    bench.add_argument("--batch-size", type=int,
                       help="batch size (default: input 1024, train 16384 (global), optimize 1024 (throughput))")
    bench.add_argument("--no-autotune", action="store_true",
                       help="train with train.autotune false in every variant: tf.data's autotuner off (train)")
    bench.add_argument("--python", metavar="PATH", help="tfx: a Python 3.10 or 3.9 for TFX 1.16's environment")
    bench.add_argument("--tfx-env", metavar="DIR", help="tfx: where TFX's environment is made (default "
                       "$TFPIPE_HOME/bench/tfx-venv)")
    bench.add_argument("--out", metavar="FILE", help="write the result as JSON")
    bench.add_argument("--no-mlflow", action="store_true", help=f"do not log a run to the {BENCH_EXPERIMENT} experiment")
    bench.set_defaults(func=_cmd_bench)

    job = sub.add_parser("train-job", help="print the Indexed Job and headless Service that run multi-worker "
                                           "training as pods (kubectl apply -f -)")
    _training_job_arguments(job, "pods are <name>-<index>")
    job.set_defaults(func=_cmd_train_job)
    tfjob = sub.add_parser("tfjob", help="print a Kubeflow TFJob (training operator v1) that runs multi-worker "
                                         "training as pods")
    _training_job_arguments(tfjob, "pods are <name>-worker-<i>")
    tfjob.set_defaults(func=_cmd_tfjob)


def _training_job_arguments(parser, pods: str) -> None:
    parser.add_argument("--name", required=True, help=f"job name ({pods})")
    parser.add_argument("--image", required=True, help="the tfpipe worker image (docker/Dockerfile)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--request", required=True, help="the training request JSON on shared storage (s3://...)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--cpu", default="4")
    parser.add_argument("--memory", default="16Gi")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per worker")
    parser.add_argument("--parameter-servers", type=int, default=0,
                        help="parameter_server training: a chief, the workers and this many parameter servers")


def _release_commands(sub) -> None:
    """schema, rollback, history, serving-sync, serving-check."""
    schema = sub.add_parser("schema", help="print the schema in force, or --curate the recorded one")
    schema.add_argument("pipeline")
    mode = schema.add_mutually_exclusive_group()
    mode.add_argument("--curate", action="store_true",
                      help="write the recorded schema beside the config as <name>.schema.pbtxt")
    mode.add_argument("--reset", action="store_true",
                      help="discard the recorded schema and the drift baseline; the next passing run records anew")
    schema.set_defaults(func=_cmd_schema)

    rollback = sub.add_parser("rollback", help="move a model's champion back and update the serving config")
    rollback.add_argument("model", help="model name (folder in the model store, registered model in MLflow)")
    rollback.add_argument("--to", type=int, metavar="VERSION",
                          help="store version to serve (default: the previous champion)")
    rollback.add_argument("--by", help="who rolls back, recorded in the store and MLflow (default: cli:$USER)")
    rollback.add_argument("--serving-timeout", type=float, default=300.0,
                          help="with TFPIPE_SERVING_URL: seconds TF Serving may take to serve it")
    rollback.add_argument("--reason", help="why, recorded in the audit trail (tfpipe history MODEL)")
    rollback.set_defaults(func=_cmd_rollback)

    history = sub.add_parser("history", help="a model's audit trail: every champion change and approval, oldest first")
    history.add_argument("model")
    history.add_argument("--version", type=int, help="only the events that moved to or from this store version")
    history.add_argument("--json", action="store_true", help="the events as JSON")
    history.set_defaults(func=_cmd_history)

    trace = sub.add_parser("trace", help="the ops that took the most time and the input-bound share, from the "
                                         "profiles of training steps (train.profile_steps)")
    trace.add_argument("where", help="a folder holding profiles (a TensorBoard or model folder), a .xplane.pb file, "
                                     "or runs:/<train run id>/model/tensorboard")
    trace.add_argument("--top", type=int, default=10, help="ops to list (default: 10)")
    trace.add_argument("--json", action="store_true", help="the summaries as JSON")
    trace.set_defaults(func=_cmd_trace)

    sync = sub.add_parser("serving-sync", help="mirror the model store into a local directory for TF Serving")
    sync.add_argument("directory", help="local directory TensorFlow Serving reads (its models.config is written there)")
    sync.add_argument("--store", help="model store to mirror (default: TFPIPE_MODEL_STORE)")
    sync.add_argument("--model", action="append", help="only this model (repeatable; default: every model)")
    sync.add_argument("--interval", type=float, default=0.0, help="keep syncing every S seconds (default: once)")
    sync.set_defaults(func=_cmd_serving_sync)

    check = sub.add_parser("serving-check", help="check what serves a model: champion, models.config, files, answers")
    check.add_argument("model")
    check.add_argument("--serving-timeout", type=float, default=300.0,
                       help="with TFPIPE_SERVING_URL: seconds TF Serving may take to serve it")
    check.set_defaults(func=_cmd_serving_check)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] in (["airflow"], ["mlflow"]):
        # All that follows is the tool's own, a leading option (--help) included: argparse's
        # REMAINDER would leave that to tfpipe, which knows no such option.
        args = parser.parse_args(argv[:1])
        args.args = argv[1:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as error:
        print(f"tfpipe: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - a failed step ends the command with its error
        if os.environ.get("TFPIPE_TRACEBACK"):
            raise
        print(f"tfpipe: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``tfpipe`` command: :func:`main`, then the process leaves without tearing the
    interpreter down once TensorFlow is loaded. Destroying TensorFlow's objects one by one took
    4 s after ``tfpipe run penguins`` (docs/benchmarks.md), with nothing left to save: the exit
    handlers (logging, MLflow, temporary folders) have run and the streams are flushed first."""
    code = main()
    if "tensorflow" in sys.modules:
        import atexit

        atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs first when it exits
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
