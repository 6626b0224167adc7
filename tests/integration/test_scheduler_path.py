"""The real scheduler path: Airflow's api-server, scheduler and dag-processor (LocalExecutor) on
127.0.0.1, with an `mlflow server`, driven as a user's client drives them, through the REST API.

The DAGs folder is a copy of the project's, with one more pipeline (`daily`) whose source is
partitioned by date, for the backfill.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.airflow_api import Api
from tests.browser import SHOTS, chromium
from tests.helpers import PENGUINS_CSV
from tests.servers import free_port, mlflow_server, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAYS = ("2026-01-01", "2026-01-02")
QUICK = {"optimize": {"variants": ["tflite_float32"], "latency_runs": 10, "throughput_batch": 64}}


def _write_daily_pipeline(dags: Path, data: Path) -> None:
    """Penguins split into one CSV per day; the pipeline reads the partition of its run's date."""
    import pandas as pd

    frame = pd.read_csv(PENGUINS_CSV)
    # The two backfilled days, and the day of the run the scheduler makes when the DAG is unpaused.
    today = datetime.now(timezone.utc).date()
    recent = [(today - timedelta(days=n)).isoformat() for n in (0, 1)]  # whatever date its timetable gives
    for day, rows in zip((*DAYS, *recent), (frame.iloc[:200], frame.iloc[200:], frame, frame)):
        (data / f"date={day}").mkdir(parents=True)
        rows.to_csv(data / f"date={day}" / "penguins.csv", index=False)
    # No scheduled penguins run: the test triggers its own.
    penguins = yaml.safe_load((dags / "pipelines" / "penguins.yaml").read_text())
    (dags / "pipelines" / "penguins.yaml").write_text(yaml.safe_dump({**penguins, "schedule": None}))
    config = {"description": "Penguins, one partition per day.", "schedule": "@daily", "model_name": "daily",
              "data": {"source": str(data / "date={{ ds }}" / "penguins.csv")}, "label": "species",
              "task": "multiclass", "train": {"epochs": 3, "early_stopping": {"patience": None}},
              # The days differ on purpose (day 1 is mostly Adelie): no drift check between runs.
              "validation": {"drift": {"categorical_linf": None, "numeric_ks": None, "numeric_jsd": None}},
              "gate": {"metrics": {"accuracy": {"lower_bound": 0.0}}}, **QUICK}
    (dags / "pipelines" / "daily.yaml").write_text(yaml.safe_dump(config))
    # A pipeline whose models a reviewer approves before they are pushed.
    gated = {**penguins, "model_name": "gated", "schedule": None, "train": {"epochs": 3},
             "gate": {"metrics": {"accuracy": {"lower_bound": 0.5}}},
             "push": {"approval": "required", "approval_timeout_hours": 1}, **QUICK}
    (dags / "pipelines" / "gated.yaml").write_text(yaml.safe_dump(gated))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("scheduler")
    dags = root / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    _write_daily_pipeline(dags, root / "data")
    port, password = free_port(), secrets.token_urlsafe(16)
    home = root / "airflow"
    home.mkdir()
    (home / "passwords.json").write_text(json.dumps({"admin": password}))
    processes, logs = [], []
    with mlflow_server(root / "mlflow") as tracking_uri:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "TFPIPE_PIPELINES_DIR": str(dags / "pipelines"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "tasks.settings.SQLITE_CONNECT_ARGS",
            "MLFLOW_TRACKING_URI": tracking_uri,
            "TFPIPE_MLFLOW_UI_URL": tracking_uri,
            "TFPIPE_HOME": str(root / "home"),
            "TFPIPE_ARTIFACT_ROOT": str(root / "artifacts"),
            "TFPIPE_MODEL_STORE": str(root / "store"),
        }
        for key in ("AWS_ENDPOINT_URL", "TFPIPE_SERVING_URL"):
            env.pop(key, None)
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
        try:
            for name, args in (("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(port)]),
                               ("scheduler", ["scheduler", "--skip-serve-logs"]),
                               ("dag-processor", ["dag-processor"])):
                log = (root / f"{name}.log").open("w")
                logs.append(log)
                processes.append(subprocess.Popen([AIRFLOW, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))
            wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=180, proc=processes[0])
            api = Api(f"http://127.0.0.1:{port}", password)
            yield {"api": api, "root": root, "env": env, "tracking_uri": tracking_uri, "password": password}
        finally:
            for proc in processes:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            for proc in processes:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for log in logs:
                log.close()


@pytest.fixture(scope="module")
def paused_at_start(stack) -> dict[str, bool]:
    """Each DAG's paused state as the dag-processor created it, before anything is unpaused."""
    api = stack["api"]
    wanted = {"penguins", "daily", "gated", "rollback_model", "serving_check"}
    dags = api.wait(lambda: (found := api.call("GET", "/api/v2/dags")["dags"])
                    and wanted <= {d["dag_id"] for d in found} and found, timeout=300)
    return {d["dag_id"]: d["is_paused"] for d in dags}


@pytest.fixture(scope="module")
def api(stack, paused_at_start):
    api = stack["api"]
    for dag_id in ("penguins", "daily", "gated"):  # serving_check starts unpaused by itself
        api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
    return api


def _mlflow(stack):
    from mlflow import MlflowClient

    return MlflowClient(stack["tracking_uri"])


def _parent(client, pipeline: str, run_id: str):
    experiment = client.get_experiment_by_name(pipeline)
    return client.search_runs([experiment.experiment_id],
                               f"tags.`tfpipe.role` = 'pipeline' and tags.`tfpipe.run_id` = '{run_id}'")[0]


def test_dags_are_listed_without_import_errors(api):
    assert api.call("GET", "/api/v2/importErrors")["total_entries"] == 0
    penguins = api.call("GET", "/api/v2/dags/penguins/details")
    assert "ingest_examples" in penguins["doc_md"] and "tfpipe" in [t["name"] for t in penguins["tags"]]


def test_pipelines_start_paused_and_the_release_dags_unpaused(paused_at_start):
    assert paused_at_start == {"penguins": True, "daily": True, "gated": True, "serving_check": False,
                               "rollback_model": False}


def _error_lines(logs: Path) -> list[str]:
    """Every record logged at error level or above in the task log files under ``logs`` (JSON
    lines; a task process's stderr is logged at error level too)."""
    found = []
    for path in sorted(logs.rglob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if str(record.get("level", "")).lower() in ("error", "critical", "exception", "fatal"):
                found.append(f"{path.relative_to(logs)}: [{record.get('logger')}] {record.get('event')}")
    return found


def _run_logs(stack, dag_id: str, run_id: str) -> Path:
    logs = stack["root"] / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    assert logs.is_dir(), f"no task logs at {logs}"
    return logs


def test_a_conf_outside_a_param_bound_is_rejected(api):
    status, body = api.status_of("POST", "/api/v2/dags/penguins/dagRuns",
                                 {"logical_date": None, "conf": {"epochs": 100000}})
    assert status == 400 and "epochs" in body
    # A trigger may make the gate stricter, never looser than the YAML's 0.85.
    status, body = api.status_of("POST", "/api/v2/dags/penguins/dagRuns",
                                 {"logical_date": None, "conf": {"accuracy_threshold": 0.6}})
    assert status == 400 and "accuracy_threshold" in body


@pytest.fixture(scope="module")
def triggered(api):
    run = api.call("POST", "/api/v2/dags/penguins/dagRuns",
                   {"logical_date": None, "conf": {"epochs": 12, "accuracy_threshold": 0.86}})
    return run["dag_run_id"], api.finished("penguins", run["dag_run_id"])


def test_triggered_run_with_conf_pushes_and_is_tracked(stack, api, triggered):
    from tasks.release.model_store import champion, read_manifest

    run_id, state = triggered
    assert state == "success", api.task_states("penguins", run_id)
    assert set(api.task_states("penguins", run_id).values()) == {"success"}
    version, uri = champion(str(stack["root"] / "store"), "penguins")
    assert version == 1 and "saved_model.pb" in read_manifest(uri)["files"]
    client = _mlflow(stack)
    parent = _parent(client, "penguins", run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["airflow.dag_run_state"] == "success"
    # The parent run's headline: the eval metrics, and what was pushed with a link to the registry.
    assert parent.data.metrics["accuracy"] >= 0.86 and parent.data.tags["tfpipe.blessed"] == "true"
    assert parent.data.tags["tfpipe.pushed_version"] == "1"
    registry = parent.data.tags["tfpipe.registry_url"]
    assert registry.startswith(stack["tracking_uri"] + "/#/models/penguins/versions/")
    assert f"]({registry})" in parent.data.tags["mlflow.note.content"]
    train = client.search_runs([parent.info.experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                               "tags.`airflow.task_id` = 'train_model'")[0]
    assert train.data.params["train.epochs"] == "12"  # the conf reached the step
    links = api.call("GET", f"/api/v2/dags/penguins/dagRuns/{quote(run_id, safe='')}/taskInstances/train_model/links")
    assert links["extra_links"]["MLflow run"].endswith(f"/runs/{train.info.run_id}?workflowType=machine_learning")
    assert client.get_model_version_by_alias("penguins", "champion").tags["store_version"] == "1"


def test_a_successful_run_logs_no_error_lines(stack, triggered):
    run_id, state = triggered
    assert state == "success"
    errors = _error_lines(_run_logs(stack, "penguins", run_id))
    assert not errors, "error-level lines in the task logs of a successful run:\n" + "\n".join(errors)


def test_the_push_triggers_the_serving_check(stack, api, triggered):
    """Every model's push triggers a check (the daily pipeline's too); the penguins push's is found
    by the asset event that triggered it."""
    def triggered_by(run) -> set[str]:
        path = f"/api/v2/dags/serving_check/dagRuns/{quote(run['dag_run_id'], safe='')}/upstreamAssetEvents"
        return {str((event.get("extra") or {}).get("model_name")) for event in api.call("GET", path)["asset_events"]}

    def checked():
        runs = api.call("GET", "/api/v2/dags/serving_check/dagRuns")["dag_runs"]
        return [r for r in runs if r["state"] in ("success", "failed") and "penguins" in triggered_by(r)]

    run = api.wait(checked, timeout=600)[0]
    assert run["run_type"] == "asset_triggered" and run["state"] == "success"
    client = _mlflow(stack)
    experiment = client.get_experiment_by_name("penguins")
    check = client.search_runs([experiment.experiment_id], "tags.`tfpipe.role` = 'serving_check'")[0]
    assert check.data.tags["tfpipe.checked_version"] == "1" and check.data.params["triggered_by_version"] == "1"
    errors = _error_lines(_run_logs(stack, "serving_check", run["dag_run_id"]))
    assert not errors, "error-level lines in the task logs of a successful run:\n" + "\n".join(errors)


def test_a_run_marked_failed_mid_training_ends_its_mlflow_run(stack, api, triggered):
    source = str(stack["root"] / "data" / f"date={DAYS[0]}" / "penguins.csv")
    run = api.call("POST", "/api/v2/dags/daily/dagRuns",
                   {"logical_date": None, "conf": {"epochs": 1000, "batch_size": 1, "data_source": source}})
    run_id = run["dag_run_id"]
    def training():
        states = api.task_states("daily", run_id)
        assert api.run_state("daily", run_id) in ("queued", "running"), states  # it must not end before
        return states.get("train_model") == "running"

    api.wait(training, timeout=600)
    time.sleep(5)  # well into training
    api.call("PATCH", f"/api/v2/dags/daily/dagRuns/{quote(run_id, safe='')}", {"state": "failed"})
    client = _mlflow(stack)
    parent = api.wait(lambda: (p := _parent(client, "daily", run_id)).info.status != "RUNNING" and p, timeout=120)
    assert parent.info.status == "FAILED" and parent.data.tags["airflow.dag_run_state"] == "failed"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    statuses = {c.data.tags["airflow.task_id"]: c.info.status for c in children}
    assert statuses["ingest_examples"] == "FINISHED" and statuses["train_model"] in ("KILLED", "FAILED")
    assert api.finished("daily", run_id, timeout=60) == "failed"


def test_backfill_runs_each_day_on_its_own_partition(stack, api, triggered):
    from tasks.ingest import read_manifest

    created = subprocess.run([AIRFLOW, "backfill", "create", "--dag-id", "daily", "--from-date", DAYS[0],
                              "--to-date", DAYS[1]], env=stack["env"], capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-3000:]

    def backfilled():
        runs = [r for r in api.call("GET", "/api/v2/dags/daily/dagRuns")["dag_runs"] if r["run_type"] == "backfill"]
        return len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs) and runs

    runs = api.wait(backfilled, timeout=900)
    assert [r["state"] for r in runs] == ["success", "success"], str([api.task_states("daily", r["dag_run_id"]) for r in runs])
    expected_rows = {DAYS[0]: 200, DAYS[1]: 144}
    for run in runs:
        day = datetime.fromisoformat(run["logical_date"]).astimezone(timezone.utc).date().isoformat()
        runs_root = stack["root"] / "artifacts" / "daily" / "runs"
        (folder,) = [p for p in runs_root.iterdir() if p.name.startswith("backfill") and day in p.name]
        manifest = read_manifest(str(folder / "examples"))
        assert [s["uri"] for s in manifest["sources"]] == [str(stack["root"] / "data" / f"date={day}" / "penguins.csv")]
        assert manifest["rows"] == expected_rows[day]


# --- the two UIs, in a browser ---------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_airflow_ui_shows_the_dag_its_docs_trigger_form_and_mlflow_links(stack, api, triggered, browser):
    base = stack["api"].base
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(base + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")
    page.goto(base + "/dags")
    page.get_by_role("link", name="penguins", exact=True).first.wait_for()
    page.screenshot(path=str(SHOTS / "airflow-dags.png"))

    page.goto(base + "/dags/penguins")
    page.get_by_role("button", name="Dag Docs").click()
    docs = page.get_by_role("dialog")
    docs.get_by_text("tfpipe pipeline: penguins").wait_for()
    assert "ingest_examples" in docs.inner_text() and "serving_check" in docs.inner_text()
    page.screenshot(path=str(SHOTS / "airflow-dag-docs.png"))
    page.keyboard.press("Escape")

    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")
    form.get_by_text("Run Parameters").wait_for()
    text = form.inner_text()
    for name, description in (("epochs", "Passes over the train split."), ("strategy", "tf.distribute strategy"),
                              ("data_source", "CSV/Parquet URI"), ("accuracy_threshold", "Gate: the eval accuracy")):
        assert name in text and description in text, name
    page.screenshot(path=str(SHOTS / "airflow-trigger-form.png"), full_page=True)
    page.keyboard.press("Escape")

    run_id, _ = triggered
    # The task instance's Details tab lists its extra links.
    page.goto(f"{base}/dags/penguins/runs/{quote(run_id, safe='')}/tasks/train_model/details")
    page.get_by_text("Extra Links").wait_for()
    link = page.get_by_role("link", name="MLflow run")
    link.wait_for()
    assert link.get_attribute("href").startswith(stack["tracking_uri"] + "/#/experiments/")
    assert page.get_by_role("link", name="MLflow experiment").count() == 1
    page.screenshot(path=str(SHOTS / "airflow-task-mlflow-links.png"))
    page.close()


def test_mlflow_ui_shows_the_run_tree_and_the_statistics_page(stack, triggered, browser):
    from tasks.tracking import experiment_url

    run_id, _ = triggered
    client = _mlflow(stack)
    parent = _parent(client, "penguins", run_id)
    experiment = parent.info.experiment_id
    validate = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and "
                                                "tags.`airflow.task_id` = 'validate_examples'")[0]
    base = stack["tracking_uri"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    # The experiment link tfpipe gives opens the UI's model-training view (its runs table), not
    # the GenAI pages (traces) that MLflow 3.17 opens by default.
    page.goto(experiment_url(base, experiment))
    page.get_by_text("Runs", exact=True).first.wait_for()
    assert "Training runs" not in page.content()  # the GenAI view's tab
    parent_link = page.get_by_role("link", name=run_id, exact=True)  # the DAG run's parent run
    parent_link.wait_for()
    page.get_by_role("row").filter(has=parent_link).get_by_role("button").first.click()  # expand: its steps
    for step in ("ingest_examples", "validate_examples", "train_model", "push_model"):
        page.get_by_role("link", name=step, exact=True).first.wait_for()
    page.screenshot(path=str(SHOTS / "mlflow-run-tree.png"))

    page.goto(f"{base}/#/experiments/{experiment}/runs/{validate.info.run_id}/artifacts/statistics/train/overview.html")
    preview = page.frame_locator("iframe").first
    preview.get_by_text("Statistics of the train split").wait_for()
    assert "bill_length_mm" in preview.locator("body").inner_text()
    page.screenshot(path=str(SHOTS / "mlflow-statistics-page.png"))
    page.close()


def _parked(stack, dag_id: str, run_id: str) -> bool:
    """Whether the scheduler has taken in the end of the process that parked approve_release.

    Airflow 3.3.2 with the LocalExecutor: an answer that resumes the task before the scheduler
    has seen its parking process end is taken for the resumed try ending without a state, and
    the task is retried (it asks again). A reviewer takes longer than those few seconds to read.
    """
    key = f"TaskInstanceKey(dag_id='{dag_id}', task_id='approve_release', run_id='{run_id}'"
    log = (stack["root"] / "scheduler.log").read_text(errors="replace")
    return any("Received executor event" in line and key in line for line in log.splitlines())


def _awaiting_review(api, dag_id: str, run_id: str) -> dict | None:
    """The approval request of a run once its approve_release task waits for an answer."""
    path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/approve_release/-1/hitlDetails"
    try:
        detail = api.call("GET", path)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None  # the task has not asked yet
        raise
    if detail.get("response_received") or detail["task_instance"]["state"] != "awaiting_input":
        # Answer once the task is parked, as the UI offers it: an answer racing the park is left
        # unseen by SQLite's unlocked reads until the request's timeout.
        return None
    return {**detail, "path": path}


def _screenshot_review(stack, browser, run_id: str, subject: str) -> None:
    """What the reviewer sees in the Airflow UI."""
    base = stack["api"].base
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(base + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(stack["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/")
    page.goto(f"{base}/dags/gated/runs/{quote(run_id, safe='')}/tasks/approve_release/required_actions")
    page.get_by_text(subject).first.wait_for()
    page.get_by_role("button", name="Approve").first.wait_for()
    page.screenshot(path=str(SHOTS / "airflow-approval.png"), full_page=True)
    page.close()


@pytest.mark.timeout(1800)  # two pipeline runs, one after the other
def test_a_reviewer_approves_one_release_and_rejects_another_through_the_rest_api(stack, api, request):
    from tasks.release import audit, model_store

    try:  # the UI's screenshot needs Debian's Chromium; the REST API's checks do not
        browser = request.getfixturevalue("browser")
    except pytest.skip.Exception:
        browser = None

    store, client = str(stack["root"] / "store"), _mlflow(stack)
    decisions = {}
    for answer, reason in (("Approve", "metrics as expected"), ("Reject", "wait for the new labels")):
        run_id = api.call("POST", "/api/v2/dags/gated/dagRuns", {"logical_date": None})["dag_run_id"]
        ask = api.wait(lambda: _parked(stack, "gated", run_id) and _awaiting_review(api, "gated", run_id),
                       timeout=600, poll=5)
        # The reviewer reads the blessing and where to look further, and answers with a reason.
        assert ask["subject"].startswith("Release gated: push the model of run")
        assert "| accuracy | (overall) | lower_bound |" in ask["body"] and "MLflow evaluate_model run" in ask["body"]
        assert "- Model card (candidate): " + stack["tracking_uri"] in ask["body"]
        assert "tfpipe.pushed_version" not in _parent(client, "gated", run_id).data.tags  # nothing pushed while waiting
        if answer == "Approve" and browser is not None:
            _screenshot_review(stack, browser, run_id, ask["subject"])
        api.call("PATCH", ask["path"], {"chosen_options": [answer], "params_input": {"reason": reason}})
        assert api.finished("gated", run_id, timeout=600) == "success"
        decisions[answer] = (run_id, api.task_states("gated", run_id))
        errors = _error_lines(_run_logs(stack, "gated", run_id))
        assert not errors, "error-level lines in the task logs:\n" + "\n".join(errors)
    approved_run, states = decisions["Approve"]
    assert states["approve_release"] == states["push_model"] == "success"
    rejected_run, states = decisions["Reject"]
    assert states["approve_release"] == "success" and states["push_model"] == "skipped"
    # Only the approved model serves; both decisions are in the audit trail with who and why.
    assert model_store.versions(store, "gated") == [1] and model_store.champion(store, "gated")[0] == 1
    events = [(e["event"], e["by"], e["reason"], e["operation"]) for e in audit.history(store, "gated")]
    assert events[0] == ("approved", "admin", "metrics as expected", f"gated/{approved_run}")
    assert events[1][:2] == ("promoted", f"gated/{approved_run}")
    assert events[2] == ("rejected", "admin", "wait for the new labels", f"gated/{rejected_run}")
    rejected = _parent(client, "gated", rejected_run).data.tags
    assert rejected["tfpipe.outcome"] == "rejected" and "wait for the new labels" in rejected["tfpipe.approval"]
    # The model card of the approved version names its approval.
    version = client.get_model_version_by_alias("gated", "champion")
    import mlflow.artifacts

    card = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.tags["model_card"].replace(".html", ".md"),
                                                    tracking_uri=stack["tracking_uri"])).read_text()
    assert "approved by admin" in card and "metrics as expected" in card
