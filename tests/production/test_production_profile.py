"""The production profile, started natively (tests/production/profile.py) and driven as a user's
client drives it: through the REST API. A pipeline run is triggered; its ``train_model`` try
is killed with the whole worker (a machine lost) once a checkpoint is on S3, and the retry runs
on the other worker and resumes from that copy. Afterwards the MLflow run tree, the registry
alias and the served folder are checked."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from tests.production.profile import BUCKET, WORKERS, production_profile

pytestmark = [pytest.mark.production, pytest.mark.timeout(3000)]


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    with production_profile(tmp_path_factory.mktemp("production")) as started:
        yield started


@pytest.fixture(scope="module")
def api(profile):
    api = profile.api
    api.wait(lambda: "penguins" in {d["dag_id"] for d in api.call("GET", "/api/v2/dags")["dags"]}, timeout=600)
    api.call("PATCH", "/api/v2/dags/penguins", {"is_paused": False})
    return api


def _lose_worker(profile, worker: str) -> None:
    """Kill one worker's "machine": the Celery worker and every process under it, at once."""
    import psutil

    root = psutil.Process(profile.processes[worker].pid)
    doomed = [root, *root.children(recursive=True)]
    for proc in doomed:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(doomed, timeout=30)


def _training_worker(profile, run_id: str) -> str | None:
    from tasks.artifacts import safe_run_id

    for worker in WORKERS:
        if (profile.worker_home(worker) / "work" / "penguins" / safe_run_id(run_id) / "train_model").is_dir():
            return worker
    return None


def _checkpoint_on_s3(profile, run_id: str) -> bool:
    from tasks.artifacts import checkpoints_uri
    from tasks.storage import split_s3

    bucket, prefix = split_s3(checkpoints_uri(f"s3://{BUCKET}/artifacts", "penguins", run_id))
    listed = profile.s3().list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/latest/")
    return any(o["Key"].endswith("/latest/checkpoint") for o in listed.get("Contents", []))


@pytest.fixture(scope="module")
def killed_and_retried(profile, api):
    """A run whose first train_model try dies with its worker after the first checkpoint copy."""
    run = api.call("POST", "/api/v2/dags/penguins/dagRuns",
                   {"logical_date": None, "conf": {"epochs": 60, "batch_size": 2}})
    run_id = run["dag_run_id"]

    def checkpointed():
        assert api.run_state("penguins", run_id) in ("queued", "running"), api.task_states("penguins", run_id)
        return _checkpoint_on_s3(profile, run_id) and _training_worker(profile, run_id)

    first = api.wait(checkpointed, timeout=900, poll=0.3)
    _lose_worker(profile, first)
    state = api.finished("penguins", run_id, timeout=1500)
    return run_id, state, first


def test_a_run_survives_a_lost_worker_and_resumes_on_the_other(profile, api, killed_and_retried):
    run_id, state, first = killed_and_retried
    assert state == "success", api.task_states("penguins", run_id)
    other = next(w for w in WORKERS if w != first)
    tries = api.call("GET", f"/api/v2/dags/penguins/dagRuns/{quote(run_id, safe='')}/taskInstances/train_model")
    assert tries["try_number"] == 2 and tries["state"] == "success"
    # The retry ran on the other worker's disk and resumed from the S3 copy, not from step 0.
    from tasks.artifacts import safe_run_id

    assert (profile.worker_home(other) / "work" / "penguins" / safe_run_id(run_id) / "train_model").is_dir()
    client = _mlflow(profile)
    experiment = client.get_experiment_by_name("penguins")
    trains = client.search_runs([experiment.experiment_id],
                                f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.task_id` = 'train_model'")
    by_try = {r.data.tags["airflow.try_number"]: r for r in trains}
    assert by_try["2"].info.status == "FINISHED"
    assert int(by_try["2"].data.tags["tfpipe.resumed_from_step"]) > 0
    assert by_try["1"].info.status != "FINISHED"


def _mlflow(profile):
    from mlflow import MlflowClient

    return MlflowClient(profile.tracking_uri)


def test_the_run_tree_registry_and_serving_folder_agree(profile, api, killed_and_retried):
    from tasks.release.models_config import parse_models_config

    run_id, state, _ = killed_and_retried
    client = _mlflow(profile)
    experiment = client.get_experiment_by_name("penguins")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.`tfpipe.role` = 'pipeline' and tags.`airflow.run_id` = '{run_id}'")
    assert parent.info.status == "FINISHED" and parent.data.tags["tfpipe.pushed_version"] == "1"
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    finished = {c.data.tags["airflow.task_id"] for c in children if c.info.status == "FINISHED"}
    assert {"ingest_examples", "validate_examples", "train_model", "evaluate_model", "optimize_model",
            "push_model"} <= finished
    # The model's artifacts went through the MLflow server to S3.
    assert client.list_artifacts(parent.info.run_id) or client.list_artifacts(children[0].info.run_id)
    listed = profile.s3().list_objects_v2(Bucket="mlflow", Prefix="artifacts/")
    assert listed.get("KeyCount", 0) > 0
    assert client.get_model_version_by_alias("penguins", "champion").tags["store_version"] == "1"
    deadline = time.monotonic() + 120
    served = profile.serving_dir / "penguins" / "1" / "saved_model.pb"
    while not served.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert served.is_file()
    config = parse_models_config((profile.serving_dir / "models.config").read_text())
    assert config["penguins"] == (str(profile.serving_dir / "penguins"), [1])


def test_task_logs_of_every_worker_are_read_from_s3(profile, api, killed_and_retried):
    run_id, _, _ = killed_and_retried
    path = f"/api/v2/dags/penguins/dagRuns/{quote(run_id, safe='')}/taskInstances/train_model/logs/2?full_content=true"
    logs = str(api.call("GET", path))
    assert "restored" in logs and "checkpoint" in logs
    listed = profile.s3().list_objects_v2(Bucket="airflow-logs", Prefix="logs/")
    assert any("task_id=push_model" in o["Key"] for o in listed.get("Contents", []))


def test_each_service_gets_only_the_credentials_it_needs(profile):
    for worker in WORKERS:
        env = profile.envs[worker]
        assert not any(k.startswith("AWS_") for k in env), worker
        assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env and "AIRFLOW__CORE__FERNET_KEY" not in env
    for service in ("scheduler", "dag-processor", "triggerer", "api-server"):
        assert not any(k.startswith("AWS_") for k in profile.envs[service]), service
    assert "AIRFLOW__CORE__FERNET_KEY" not in profile.envs["scheduler"]
    assert not any(k.startswith("AIRFLOW") for k in profile.envs["serving-sync"])
    assert "FabAuthManager" in profile.envs["api-server"]["AIRFLOW__CORE__AUTH_MANAGER"]
    assert profile.envs["api-server"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


def test_successful_tasks_log_no_error_lines(profile, api, killed_and_retried):
    """Read back from S3 through the api-server, as the UI shows them: the last try of every
    task of the run logged nothing at error level."""
    run_id, _, _ = killed_and_retried
    base = f"/api/v2/dags/penguins/dagRuns/{quote(run_id, safe='')}/taskInstances"
    errors = []
    for ti in api.call("GET", base)["task_instances"]:
        content = api.call("GET", f"{base}/{ti['task_id']}/logs/{ti['try_number']}?full_content=true")["content"]
        assert content, ti["task_id"]
        errors += [f"{ti['task_id']}: {line.get('event')}" for line in content
                   if isinstance(line, dict) and str(line.get("level", "")).lower() in ("error", "critical", "exception")]
    assert not errors, "\n".join(errors)


def test_the_ui_signs_in_with_fab_and_offers_the_aws_connection_form(profile, api):
    """The FAB sign-in page, the connection the profile added (type aws), and the Amazon
    provider's form for a new one, in Debian's Chromium."""
    from tests.browser import SHOTS, chromium

    base = profile.api.base
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(base + "/")
        page.wait_for_url("**/auth/login/**")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", profile.password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda url: "/auth/login" not in url)
        page.goto(base + "/connections")
        page.get_by_text("aws_default").wait_for()
        page.screenshot(path=str(SHOTS / "production-connections.png"))
        page.get_by_role("button", name="Add Connection").click()
        form = page.get_by_role("dialog")
        form.get_by_role("combobox").first.click()
        page.keyboard.type("Amazon Web Services")
        page.keyboard.press("Enter")
        form.get_by_text("AWS Secret Access Key").wait_for()
        assert "AWS Access Key ID" in form.inner_text()
        page.screenshot(path=str(SHOTS / "production-aws-connection-form.png"))
        page.close()
