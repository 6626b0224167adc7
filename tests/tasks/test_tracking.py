"""The MLflow adapter against a real SQLite store: the experiment kind, and the headline a
pipeline run's parent run carries (eval metrics, the trivial baseline, blessed, what was pushed)."""

from pathlib import Path

import pytest

from tasks.settings import Settings
from tasks.tracking import EXPERIMENT_KIND, MODEL_TRAINING, NOTE, MlflowTracking, RunIdentity
from tests.helpers import write_pipeline


@pytest.fixture
def tracking(tmp_path):
    return MlflowTracking(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_experiment_kind_is_what_the_installed_mlflow_ui_reads():
    import mlflow

    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    if not bundle.is_dir():
        pytest.skip("this mlflow has no UI bundle")
    texts = [p.read_text(errors="replace") for p in bundle.glob("*.js")]
    assert any(f'key:"{EXPERIMENT_KIND}"' in t or f'"{EXPERIMENT_KIND}"===' in t for t in texts)
    assert any(f'CUSTOM_MODEL_DEVELOPMENT="{MODEL_TRAINING}"' in t for t in texts)


def test_a_pipeline_experiment_opens_on_its_training_runs(tracking):
    created = tracking.experiment_id("fresh")
    assert tracking.client.get_experiment(created).tags[EXPERIMENT_KIND] == MODEL_TRAINING
    older = tracking.client.create_experiment("older")  # made before tfpipe set the kind
    assert tracking.experiment_id("older") == older
    assert tracking.client.get_experiment(older).tags[EXPERIMENT_KIND] == MODEL_TRAINING


def _parent(tracking, identity):
    return tracking.client.get_run(tracking.parent_run_id(identity))


BLESSING = {"blessed": True, "metrics": {"accuracy": 0.97, "log_loss": 0.12},
            "trivial": {"description": "always the most frequent class (Adelie)",
                        "metrics": {"accuracy": 0.44, "log_loss": 1.05}}}
PUSHED = {"model_name": "pen guins", "version": 3, "uri": "/store/pen guins/3", "registry_version": "7",
          "champion": 3}


def test_the_parent_run_carries_the_headline(tracking):
    identity = RunIdentity("headline", "manual__1", "headline", airflow_url="http://127.0.0.1:8080")
    with tracking.step_run(identity, "evaluate_model", 1) as tracker:
        tracker.log_headline(blessing=BLESSING)
    for attempt in (1, 2):  # a retried push states it once
        with tracking.step_run(identity, "push_model", attempt) as tracker:
            tracker.log_headline(pushed=PUSHED, mlflow_ui_url="http://127.0.0.1:5000/")
    parent = _parent(tracking, identity)
    assert parent.data.metrics == {"accuracy": 0.97, "log_loss": 0.12, "baseline_accuracy": 0.44,
                                   "baseline_log_loss": 1.05}
    tags = parent.data.tags
    assert tags["tfpipe.blessed"] == "true" and tags["tfpipe.baseline"].startswith("always the most frequent")
    url = "http://127.0.0.1:5000/#/models/pen%20guins/versions/7"
    assert (tags["tfpipe.pushed_version"], tags["tfpipe.registry_version"], tags["tfpipe.registry_url"]) == (
        "3", "7", url)
    note = tags[NOTE].splitlines()
    assert note[0].startswith("Airflow DAG run: [headline / manual__1]")  # what was there stays first
    assert note[1:] == ["", f"Pushed **pen guins** v3 to `/store/pen guins/3`, [registry version 7]({url}); "
                            "champion: v3"]


@pytest.mark.parametrize("trivial", [None, {}, {"description": "mean"}, {"metrics": None}, "not a record"])
def test_a_blessing_without_a_trivial_baseline_still_makes_a_headline(tracking, trivial):
    identity = RunIdentity("nobaseline", "r1", "nobaseline")
    blessing = {"blessed": False, "metrics": {"rmse": 2.5}, **({"trivial": trivial} if trivial is not None else {})}
    with tracking.step_run(identity, "evaluate_model", 1) as tracker:
        tracker.log_headline(blessing=blessing)
    parent = _parent(tracking, identity)
    assert parent.data.metrics == {"rmse": 2.5}
    assert parent.data.tags["tfpipe.blessed"] == "false" and "tfpipe.pushed_version" not in parent.data.tags
    assert NOTE not in parent.data.tags


def test_evaluate_and_push_steps_write_the_headline(trained, tmp_path):
    from tasks.pipeline import evaluate_model
    from tasks.context import make_context
    from tasks.release_steps import push_model

    settings = Settings(home=tmp_path / "home", artifact_root=str(tmp_path / "artifacts"),
                        model_store=str(tmp_path / "store"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    ctx = make_context(write_pipeline(tmp_path, name="headline"), run_id="r1", settings=settings)
    examples, model = trained["examples"].to_dict(), trained["model"].to_dict()
    blessing = evaluate_model(ctx, examples, model)
    assert blessing.blessed
    pushed = push_model(ctx, examples, model, blessing)
    tracking = MlflowTracking(settings.tracking_uri)
    parent = _parent(tracking, ctx.identity)
    assert parent.data.metrics["accuracy"] == pytest.approx(blessing.metrics["accuracy"])
    baseline = (blessing.trivial or {}).get("metrics") or {}
    assert {k for k in parent.data.metrics if k.startswith("baseline_")} == {f"baseline_{k}" for k in baseline}
    tags = parent.data.tags
    assert tags["tfpipe.blessed"] == "true" and tags["tfpipe.outcome"] == "pushed"
    assert tags["tfpipe.pushed_version"] == "1" and tags["tfpipe.registry_version"] == pushed["registry_version"]
    assert tags["tfpipe.registry_url"] == f"{settings.mlflow_ui_url}/#/models/headline/versions/1"
    assert f"]({tags['tfpipe.registry_url']})" in tags[NOTE]


def test_a_store_made_ahead_is_complete_and_never_replaces_one(tmp_path):
    from mlflow import MlflowClient

    from tasks.tracking.store import make_store, new_sqlite_store, start_new_store

    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    assert new_sqlite_store(uri) == path and new_sqlite_store("http://127.0.0.1:5000") is None
    assert start_new_store("postgresql://mlflow@127.0.0.1/mlflow") is None  # a server's store is never made here
    assert start_new_store(uri).wait()
    assert new_sqlite_store(uri) is None and start_new_store(uri) is None
    client = MlflowClient(tracking_uri=uri)  # opens it as MLflow's own first connection would have made it
    experiment = client.create_experiment("made-ahead")
    client.create_registered_model("made-ahead")
    before = path.read_bytes()
    assert make_store(path) is False  # one is there by the time it is done: left as it is
    assert path.read_bytes() == before and client.get_experiment(experiment).name == "made-ahead"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no partial database left


def test_a_store_the_second_process_cannot_make_is_made_by_mlflow(tmp_path, caplog):
    from tasks.tracking.store import start_new_store

    path = tmp_path / ("s" * 245)  # its journal's name fits the file system, its partial twin's does not
    uri = f"sqlite:///{path}"
    assert start_new_store(uri).wait() is False
    assert "failed (MLflow makes it now)" in caplog.text
    assert MlflowTracking(uri).experiment_id("fallback")
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_first_run_makes_its_store_while_loading_tensorflow(tmp_path):
    """In a process that has loaded neither MLflow nor TensorFlow, the first connection to a new
    embedded store has it made by a second process while TFDV loads; the store is complete."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from tasks.settings import Settings\n"
        "from tasks.context import tracking_for\n"
        f"settings = Settings.from_env({{'TFPIPE_HOME': {str(tmp_path / 'home')!r}}})\n"
        "loaded = 'tensorflow_data_validation' in sys.modules\n"
        "tracking = tracking_for(settings)\n"
        "print(json.dumps({'before': loaded, 'after': 'tensorflow_data_validation' in sys.modules,\n"
        "                  'experiment': tracking.experiment_id('first')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"before": False, "after": True, "experiment": result["experiment"]} and result["experiment"]
    assert sorted(p.name for p in (tmp_path / "home" / "mlflow").iterdir()) == ["mlflow.db"]
