"""The release path on a local model store: push with warm-up requests and checksums, the checks
that a pushed version serves, the champion pointer and TF Serving's models.config, retention,
rollback, serving-sync, and the MLflow registry alias that follows the champion."""

import json
from pathlib import Path

import pytest

from tasks.release import audit, model_store, models_config, serving, sync
from tasks.config import GateConfig, MetricGate, OptimizeConfig
from tasks.evaluate import eval_data, evaluate_model, predict
from tasks.optimize import optimize_model
from tasks.context import make_context
from tasks.release_steps import push_model as push_step
from tasks.release.model_store import claim_version, versions
from tasks.release.push import PushError, push_model
from tasks.settings import Settings
from tasks.training.export import read_model_spec
from tests.helpers import blessing_for, run_concurrently, write_pipeline
from tests.servers import model_server


@pytest.fixture(scope="module")
def release(trained, tmp_path_factory):
    """A blessing and optimized variants for the session's tiny model, and one MLflow store."""
    root = tmp_path_factory.mktemp("release")
    blessing = evaluate_model(trained["model"].uri, trained["examples"].uri,
                              GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}), None,
                              str(root / "evaluation"), trained["cache"], trained["work"])
    optimized = optimize_model(trained["model"].uri, trained["examples"].uri,
                               OptimizeConfig(max_accuracy_drop=0.05, latency_runs=10, throughput_batch=64),
                               str(root / "optimized"), trained["cache"], trained["work"], throughput_seconds=0.05)
    records, _ = eval_data(trained["examples"].uri, read_model_spec(trained["model"].uri), trained["cache"])
    return {"root": root, "pipeline": write_pipeline(root, name="tiny"), "blessing": blessing,
            "optimized": optimized.to_dict(), "records": records,
            "saved_model": Path(trained["model"].saved_model_uri)}


def _settings(root: Path, **changes) -> Settings:
    return Settings(home=root / "home", artifact_root=str(root / "artifacts"), model_store=str(root / "store"),
                    tracking_uri=f"sqlite:///{root / 'mlflow.db'}", **changes)


def _bless(trained, release, settings, model_name, run_id):
    """Evaluate against what serves now, as a run does before it pushes (the push checks it)."""
    state = model_store.champion_state(settings.model_store, model_name)
    blessing = evaluate_model(trained["model"].uri, trained["examples"].uri,
                              GateConfig(metrics={"accuracy": MetricGate(lower_bound=0.0)}),
                              model_store.champion(settings.model_store, model_name),
                              str(release["root"] / "evaluations" / model_name / run_id), trained["cache"],
                              trained["work"], champion_generation=state[1] if state else None)
    return blessing.to_dict()


def _push(trained, release, model_name, run_id, settings=None, blessing=None, **overrides):
    settings = settings or _settings(release["root"])
    # These tests push one trained model many times: as new versions, unless a test says otherwise.
    ctx = make_context(release["pipeline"], run_id=run_id, settings=settings,
                       overrides={"model_name": model_name, "push.skip_identical": False, **overrides})
    blessing = blessing or _bless(trained, release, settings, model_name, run_id)
    return push_step(ctx, trained["examples"].to_dict(), trained["model"].to_dict(), blessing, release["optimized"])


def _client(release):
    from mlflow import MlflowClient

    return MlflowClient(_settings(release["root"]).tracking_uri)


def test_push_step_verifies_checks_promotes_and_registers(trained, release):
    record = _push(trained, release, "alpha", "run-1")
    store = Path(_settings(release["root"]).model_store)
    version_dir = store / "alpha" / "1"
    assert record["version"] == record["champion"] == 1 and record["previous_champion"] is None
    # Every file is in the manifest with its size and SHA-256, and nothing else is there.
    manifest = json.loads((version_dir / model_store.MANIFEST_FILE).read_text())
    on_disk = {p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {model_store.MANIFEST_FILE}
    from tasks.storage import sha256_file

    for rel, entry in manifest["files"].items():
        assert entry == {"size": (version_dir / rel).stat().st_size, "sha256": sha256_file(version_dir / rel)}
    # Warm-up requests: the first 16 eval examples, one PredictionLog each, replayed by the check.
    assert serving.read_warmup_requests(version_dir / serving.WARMUP_FILE) == release["records"][:16]
    assert record["checks"]["store"]["passed"] and record["checks"]["store"]["requests"] == 16
    # The kept optimized variants travel with the model.
    rows = release["optimized"]["report"]["variants"]
    kept = {rows[name]["file"] for name in release["optimized"]["kept"] if rows[name].get("file")}
    assert {p.name for p in (version_dir / "variants").iterdir()} == kept | {"report.json", "tradeoff.png"}
    assert "pruned_saved_model" in kept and (version_dir / "variants" / "pruned_saved_model" / "saved_model.pb").is_file()
    # TF Serving serves exactly the champion.
    assert models_config.parse_models_config((store / "models.config").read_text()) == {
        "alpha": (str(store.resolve() / "alpha"), [1])}
    champion = _client(release).get_model_version_by_alias("alpha", "champion")
    assert champion.tags["store_version"] == "1" and champion.tags["store_uri"] == str(version_dir)
    assert champion.tags["code_version"] and champion.tags["data_version"]
    _assert_model_card(release, record, champion)


def _assert_model_card(release, record, registry_version):
    """The version's model card: logged to the push run (Markdown and HTML), linked and summarized
    by the registry version's description."""
    import mlflow.artifacts

    assert registry_version.tags["model_card"] == record["model_card"]["uri"]
    assert "accuracy" in registry_version.description and "Model card: http" in registry_version.description
    card = mlflow.artifacts.load_text(record["model_card"]["uri"].replace(".html", ".md"))
    for heading in ("## Data", "## Model and training", "## Evaluation", "## Blessing", "## Optimized variants",
                    "## Approval", "## Known limits", "## Champion history of this version"):
        assert heading in card
    trivial = release["blessing"].trivial["description"]
    assert trivial in card and "BLESSED" in card and "promoted" in card and record["weights_sha256"] in card
    assert "bill_length_mm" in card and "tflite_int8" in card and "Adelie 30, Chinstrap 14, Gentoo 25" in card
    page = mlflow.artifacts.load_text(record["model_card"]["uri"])
    assert page.startswith("<!doctype html>") and "<script" not in page and "<h2>Known limits</h2>" in page


def test_a_model_card_escapes_what_the_data_says():
    from tasks.release.model_card import Bullets, Section, Table, to_html, to_markdown

    hostile = "<script>alert(1)</script>|x"
    sections = [Section("Data", [hostile, Table(("feature",), [(hostile,)]), Bullets([hostile])])]
    page = to_html("card", sections)
    assert "<script>" not in page and page.count("&lt;script&gt;") == 3
    assert "\\|x" in to_markdown("card", sections)  # a cell cannot open another column


def test_new_champion_replaces_the_old_which_retention_removes_later(trained, release):
    records = [_push(trained, release, "beta", f"run-{i}", **{"push.keep_versions": 2}) for i in range(1, 4)]
    assert [r["version"] for r in records] == [1, 2, 3]
    assert [r["removed_versions"] for r in records] == [[], [], [1]]
    store = _settings(release["root"]).model_store
    assert model_store.versions(store, "beta") == [2, 3]
    pointer = model_store.read_champion(store, "beta")
    assert pointer["version"] == 3 and [h["version"] for h in pointer["history"]] == [1, 2]
    client = _client(release)
    replaced = client.get_model_version("beta", records[1]["registry_version"])
    assert replaced.tags["replaced_by_version"] == records[2]["registry_version"]
    assert "replaced_as_champion_at" in replaced.tags


def test_rollback_moves_champion_serving_config_and_registry_alias(trained, release, monkeypatch, capsys):
    from tasks.cli import main

    root = release["root"]
    for key, value in (("TFPIPE_HOME", root / "home"), ("TFPIPE_ARTIFACT_ROOT", root / "artifacts"),
                       ("TFPIPE_MODEL_STORE", root / "store"), ("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")):
        monkeypatch.setenv(key, str(value))
    monkeypatch.delenv("TFPIPE_SERVING_URL", raising=False)
    first = _push(trained, release, "gamma", "run-1")
    second = _push(trained, release, "gamma", "run-2")
    assert main(["rollback", "gamma", "--by", "tester", "--reason", "v2 mislabels Gentoo"]) == 0
    assert "champion v2 -> v1" in capsys.readouterr().out
    store = str(root / "store")
    assert model_store.champion(store, "gamma")[0] == 1
    assert models_config.parse_models_config((root / "store" / "models.config").read_text())["gamma"][1] == [1]
    client = _client(release)
    assert str(client.get_model_version_by_alias("gamma", "champion").version) == first["registry_version"]
    left = client.get_model_version("gamma", second["registry_version"])
    assert left.tags["rolled_back_by_version"] == first["registry_version"]
    runs = client.search_runs([client.get_experiment_by_name("gamma").experiment_id], "tags.`tfpipe.role` = 'rollback'")
    assert len(runs) == 1 and runs[0].data.params["to_store_version"] == "1"
    # The next push is champion again; the gate compares with what is served, v1.
    assert _push(trained, release, "gamma", "run-3")["champion"] == 3
    # Every champion change is in the audit trail: who, when, from which version to which, why.
    events = [(e["event"], e["from_version"], e["to_version"], e["by"]) for e in audit.history(store, "gamma")]
    assert events == [("promoted", None, 1, "tiny/run-1"), ("promoted", 1, 2, "tiny/run-2"),
                      ("rolled_back", 2, 1, "tester"), ("promoted", 1, 3, "tiny/run-3")]
    assert audit.history(store, "gamma")[2]["reason"] == "v2 mislabels Gentoo"
    assert audit.history(store, "gamma")[1]["details"]["registry_version"] == second["registry_version"]
    assert main(["history", "gamma", "--version", "2"]) == 0
    table = capsys.readouterr().out
    assert "promoted" in table and "rolled_back" in table and "v2 mislabels Gentoo" in table and "v3" not in table
    # ... and tags of the registry versions it moved between, which the MLflow UI shows.
    left = client.get_model_version("gamma", second["registry_version"])
    audit_tags = {k.rsplit(".", 1)[-1]: v for k, v in left.tags.items() if k.startswith("audit.")}
    assert set(audit_tags) == {"promoted", "rolled_back"} and "by tester: v2 mislabels Gentoo" in audit_tags["rolled_back"]
    # The trail outlives the versions: retention removes v1 and v2, not their history.
    assert model_store.apply_retention(store, "gamma", keep=1) == [1, 2]
    assert len(audit.history(store, "gamma", version=1)) == 4
    assert main(["history", "../gamma"]) == 1
    # Bad requests are refused with what is there.
    assert main(["rollback", "gamma", "--to", "99"]) == 1
    assert "no complete version 99" in capsys.readouterr().err
    assert main(["rollback", "nobody"]) == 1
    assert "has no champion" in capsys.readouterr().err
    assert model_store.champion(store, "gamma")[0] == 3


def test_damaged_version_fails_the_store_check(trained, release, tmp_path):
    store = str(tmp_path / "store")
    warmup = release["records"][:8]
    pushed = push_model(release["saved_model"], release["blessing"], store, "m", owner="t", warmup_records=warmup)
    expected = predict(release["saved_model"], warmup)
    assert serving.check_pushed_model(pushed.uri, expected, tmp_path / "cache")["max_abs_diff"] <= 1e-5
    shifted = {**expected, "scores": expected["scores"] + 1e-3}  # what another model would answer
    with pytest.raises(serving.ServingCheckError, match="'scores' differs by 0.001"):
        serving.check_pushed_model(pushed.uri, shifted, tmp_path / "cache")
    data = next((Path(pushed.uri) / "variables").glob("variables.data-*"))
    data.write_bytes(bytes(len(data.read_bytes())))  # same size, every weight zero
    with pytest.raises(serving.ServingCheckError, match="does not load or answer serving_default"):
        serving.check_pushed_model(pushed.uri, expected, tmp_path / "cache")
    (Path(pushed.uri) / serving.WARMUP_FILE).unlink()
    with pytest.raises(serving.ServingCheckError, match="tf_serving_warmup_requests"):
        serving.check_pushed_model(pushed.uri, expected, tmp_path / "cache")


def test_tf_serving_must_make_the_version_available(trained, release):
    root = release["root"]
    with model_server(root / "store" / "models.config") as url:
        record = _push(trained, release, "delta", "run-1", settings=_settings(root, serving_url=url))
    assert record["checks"]["tf_serving"]["state"] == "AVAILABLE"
    assert record["checks"]["tf_serving"]["requests"] == 16
    assert record["checks"]["tf_serving"]["max_abs_diff"] <= 1e-5


def test_tf_serving_that_does_not_serve_restores_the_previous_champion(trained, release, tmp_path):
    root = release["root"]
    _push(trained, release, "epsilon", "run-1")
    config_before = (root / "store" / "models.config").read_text()
    # A server that reads another config never loads epsilon's new version.
    with model_server(tmp_path / "other.config") as url:
        with pytest.raises(serving.ServingCheckError, match="v1 is champion again"):
            _push(trained, release, "epsilon", "run-2", settings=_settings(root, serving_url=url),
                  **{"push.serving_timeout_seconds": 2})
    store = str(root / "store")
    assert model_store.versions(store, "epsilon") == [1]
    assert model_store.read_champion(store, "epsilon")["version"] == 1
    assert (root / "store" / "models.config").read_text() == config_before
    assert _client(release).get_model_version_by_alias("epsilon", "champion").tags["store_version"] == "1"
    reverted = audit.history(store, "epsilon")[-1]
    assert (reverted["event"], reverted["from_version"], reverted["to_version"]) == ("reverted", 2, 1)
    assert "did not serve v2" in reverted["reason"]


def test_a_model_identical_to_the_champion_is_not_pushed_again(trained, release):
    from tasks.release.push import weights_digest

    first = _push(trained, release, "zeta", "run-1", **{"push.skip_identical": True})
    store = _settings(release["root"]).model_store
    digest = weights_digest(release["saved_model"])
    assert model_store.read_manifest(first["uri"])["weights_sha256"] == digest == first["weights_sha256"]
    again = _push(trained, release, "zeta", "run-2", **{"push.skip_identical": True})
    assert again["pushed"] is False and again["identical_to"] == 1
    assert model_store.versions(store, "zeta") == [1] and model_store._claimed(store, "zeta") == {1}
    assert [e["to_version"] for e in audit.history(store, "zeta")] == [1]
    # The first run's retry is not "identical to itself": it finishes its push.
    assert _push(trained, release, "zeta", "run-1", **{"push.skip_identical": True})["version"] == 1


def test_the_weights_digest_is_of_the_values_not_the_files(tmp_path):
    import tensorflow as tf

    from tasks.release.push import weights_digest

    module = tf.Module()
    module.kernel = tf.Variable([[0.5, -1.0], [2.0, 0.25]])
    module.bias = tf.Variable([0.0, 1.0])
    tf.saved_model.save(module, str(tmp_path / "a"))
    tf.saved_model.save(module, str(tmp_path / "b"))  # saved twice: another save, the same weights
    module.bias.assign([0.0, 1.0 + 1e-6])
    tf.saved_model.save(module, str(tmp_path / "c"))
    assert weights_digest(tmp_path / "a") == weights_digest(tmp_path / "b") != weights_digest(tmp_path / "c")


def test_concurrent_pushes_get_their_own_versions_and_the_newest_is_champion(release, tmp_path):
    store = str(tmp_path / "store")

    def push(i):
        pushed = push_model(release["saved_model"], release["blessing"], store, "m", owner=f"w{i}",
                            warmup_records=release["records"][:2])
        model_store.set_champion(store, "m", pushed.version, by=f"w{i}", reason="push", only_if_newer=True)
        return pushed.version

    assert sorted(run_concurrently(push, 4)) == [1, 2, 3, 4]
    assert model_store.versions(store, "m") == [1, 2, 3, 4]
    assert model_store.champion(store, "m")[0] == 4


def _fake_versions(store: Path, name: str, count: int) -> None:
    """Complete versions as the store sees them (the store logic does not look inside)."""
    for version in range(1, count + 1):
        (store / name / str(version)).mkdir(parents=True)
        (store / name / str(version) / "saved_model.pb").write_bytes(b"pb")


def test_retention_keeps_the_champion_and_everything_newer(tmp_path):
    store = tmp_path / "store"
    _fake_versions(store, "m", 5)
    assert model_store.apply_retention(str(store), "m", keep=1) == []  # no champion pointer: nothing replaced
    model_store.set_champion(str(store), "m", 5, by="t", reason="push")
    model_store.set_champion(str(store), "m", 2, by="t", reason="rollback")
    assert model_store.rollback_target(str(store), "m") == 1
    assert model_store.apply_retention(str(store), "m", keep=2) == [1]
    assert model_store.versions(str(store), "m") == [2, 3, 4, 5]
    with pytest.raises(model_store.ModelStoreError, match="no complete version 1"):
        model_store.set_champion(str(store), "m", 1, by="t", reason="rollback")


def test_retention_keeps_a_version_a_push_may_still_promote(tmp_path):
    """Two pushes race: v3 wins, the loser's v2 (never champion, pushed just now) is gated again
    and may still be promoted, so retention leaves it until the grace period is over."""
    store = tmp_path / "store"
    _fake_versions(store, "m", 3)
    for version in (1, 2):
        (store / "m" / str(version) / "tfpipe_manifest.json").write_text(
            json.dumps({"pushed_at": model_store.now(), "files": {}}))
    model_store.set_champion(str(store), "m", 1, by="seed", reason="push")
    model_store.set_champion(str(store), "m", 3, by="b", reason="push")
    assert model_store.apply_retention(str(store), "m", keep=1) == [1]  # v1 was champion: done with
    assert model_store.versions(str(store), "m") == [2, 3]
    assert model_store.set_champion(str(store), "m", 2, by="a", reason="push").changed
    assert model_store.apply_retention(str(store), "m", keep=1, grace_seconds=0) == []  # v3 was champion: newer
    model_store.set_champion(str(store), "m", 3, by="t", reason="rollback")
    assert model_store.apply_retention(str(store), "m", keep=1) == [2]  # v2 was champion since


def test_a_push_does_not_demote_a_newer_champion(tmp_path):
    store = tmp_path / "store"
    _fake_versions(store, "m", 3)
    model_store.set_champion(str(store), "m", 3, by="b", reason="push")
    late = model_store.set_champion(str(store), "m", 2, by="a", reason="push", only_if_newer=True)
    assert (late.version, late.changed) == (3, False)


def test_serving_sync_publishes_verified_versions_and_follows_the_store(release, tmp_path):
    store, local = str(tmp_path / "store"), tmp_path / "serving"
    for i in range(3):
        pushed = push_model(release["saved_model"], release["blessing"], store, "m", owner=f"p{i}",
                            warmup_records=release["records"][:2])
        model_store.set_champion(store, "m", pushed.version, by="t", reason="push")
    first = sync.sync_store(store, local)
    assert first.added == {"m": [1, 2, 3]} and first.champions == {"m": 3}
    assert models_config.parse_models_config((local / "models.config").read_text()) == {"m": (str(local / "m"), [3])}
    assert sorted(p.name for p in (local / "m").iterdir()) == ["1", "2", "3"]  # no staging folders left
    # The store drops v1 and v2 and gains v4 whose variables were damaged after the push.
    model_store.apply_retention(store, "m", keep=1)
    pushed = push_model(release["saved_model"], release["blessing"], store, "m", owner="p4",
                        warmup_records=release["records"][:2])
    model_store.set_champion(store, "m", pushed.version, by="t", reason="push")
    data = next((Path(pushed.uri) / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[::-1])
    second = sync.sync_store(store, local)
    assert second.removed == {"m": [1, 2]} and "SHA-256" in second.skipped["m"][0]
    assert second.champions == {"m": 3}  # v4 is not there: keep serving v3
    assert sorted(p.name for p in (local / "m").iterdir()) == ["3"]


def test_models_config_is_what_tf_serving_parses(tmp_path):
    text = models_config.render_models_config({"b": 2, "a": 7}, "/models")
    assert models_config.parse_models_config(text) == {"a": ("/models/a", [7]), "b": ("/models/b", [2])}
    assert 'model_platform: "tensorflow"' in text


def test_serving_check_follows_what_serves(release, tmp_path):
    store = str(tmp_path / "store")
    for i in range(2):
        pushed = push_model(release["saved_model"], release["blessing"], store, "m", owner=f"p{i}",
                            warmup_records=release["records"][:4])
        model_store.set_champion(store, "m", pushed.version, by="t", reason="push")
    with pytest.raises(serving.ServingCheckError, match="models.config does not exist"):
        serving.check_serving(store, "m", tmp_path / "cache")
    models_config.write_models_config(store)
    report = serving.check_serving(store, "m", tmp_path / "cache")
    assert (report["version"], report["requests"], report["files"]) == (2, 4, len(model_store.read_manifest(pushed.uri)["files"]))
    with model_server(tmp_path / "store" / "models.config") as url:
        served = serving.check_serving(store, "m", tmp_path / "cache", serving_url=url, timeout=10)
    assert served["tf_serving"]["state"] == "AVAILABLE" and served["tf_serving"]["max_abs_diff"] <= 1e-5
    # The champion moves but nobody rewrote models.config: TF Serving would serve the wrong version.
    model_store.set_champion(store, "m", 1, by="t", reason="rollback")
    with pytest.raises(serving.ServingCheckError, match=r"serves m \[2\], but the champion is v1"):
        serving.check_serving(store, "m", tmp_path / "cache")
    models_config.write_models_config(store)
    data = next((tmp_path / "store" / "m" / "1" / "variables").glob("variables.data-*"))
    content = data.read_bytes()
    data.write_bytes(content[:-1] + bytes([content[-1] ^ 0xFF]))  # one bit pattern changed, same size
    with pytest.raises(serving.ServingCheckError, match="differs from the manifest"):
        serving.check_serving(store, "m", tmp_path / "cache")
    with pytest.raises(serving.ServingCheckError, match="no champion"):
        serving.check_serving(store, "nobody", tmp_path / "cache")


def test_serving_check_is_an_mlflow_run_passed_or_failed(trained, release, monkeypatch, capsys):
    from tasks.release_steps import check_serving

    settings = _settings(release["root"])
    _push(trained, release, "zeta", "run-1")
    report = check_serving(settings, "zeta", pushed={"version": 1}, by="tester")
    client = _client(release)
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["tfpipe.role"] == "serving_check"
    assert run.data.tags["tfpipe.checked_version"] == "1" and run.data.params["triggered_by_version"] == "1"
    (Path(settings.model_store) / "models.config").unlink()
    from tasks.cli import main

    for key, value in (("TFPIPE_HOME", settings.home), ("TFPIPE_MODEL_STORE", settings.model_store),
                       ("MLFLOW_TRACKING_URI", settings.tracking_uri)):
        monkeypatch.setenv(key, str(value))
    assert main(["serving-check", "zeta"]) == 1  # what tfpipe serving-check says: the error, no traceback
    assert "models.config does not exist" in capsys.readouterr().err
    failed = client.search_runs([run.info.experiment_id], "tags.`tfpipe.serving_check` = 'failed'")
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    models_config.write_models_config(settings.model_store)  # leave the store as the other tests expect


def _served(release, name):
    store = Path(_settings(release["root"]).model_store)
    config = models_config.parse_models_config((store / "models.config").read_text())
    alias = _client(release).get_model_version_by_alias(name, "champion").tags["store_version"]
    return model_store.read_champion(str(store), name)["version"], config[name][1], int(alias)


def test_a_push_failing_after_the_swap_restores_the_champion_and_its_retry_finishes_the_same_version(
        trained, release, monkeypatch):
    from tasks.tracking import registry as tracking

    _push(trained, release, "zeta", "run-1")
    blessing = _bless(trained, release, _settings(release["root"]), "zeta", "run-2")
    real = tracking.move_champion_alias

    def registry_down(*args, **kwargs):
        raise ConnectionError("the registry is down")

    monkeypatch.setattr(tracking, "move_champion_alias", registry_down)
    with pytest.raises(ConnectionError):
        _push(trained, release, "zeta", "run-2", blessing=blessing)
    assert _served(release, "zeta") == (1, [1], 1)  # the failed task left no new champion
    store = _settings(release["root"]).model_store
    assert model_store.versions(store, "zeta") == [1, 2]  # v2 complete, claimed by run-2, not served
    monkeypatch.setattr(tracking, "move_champion_alias", real)
    retried = _push(trained, release, "zeta", "run-2", blessing=blessing)
    assert retried["version"] == 2 and model_store.versions(store, "zeta") == [1, 2]  # no third version
    assert _served(release, "zeta") == (2, [2], 2)


def test_a_stale_blessing_is_gated_again_after_a_push_and_refused_after_a_rollback(trained, release):
    from tasks.cli import main

    store = _settings(release["root"]).model_store
    _push(trained, release, "eta", "run-1")
    late = _bless(trained, release, _settings(release["root"]), "eta", "run-2")  # evaluated against v1
    _push(trained, release, "eta", "run-3")  # v2 comes in between (a concurrent run, a backfill)
    regated = _push(trained, release, "eta", "run-2", blessing=late)  # gated again, now against v2
    assert regated["pushed"] and regated["version"] == 3 and regated["evaluated_against"]["version"] == 2
    assert _served(release, "eta") == (3, [3], 3)
    assert model_store.rollback_target(store, "eta") == 2
    from tasks.release_steps import rollback_model

    rollback_model(_settings(release["root"]), "eta", to_version=2)
    # A rollback between evaluation and push: the run in flight does not undo it.
    in_flight = _bless(trained, release, _settings(release["root"]), "eta", "run-4")  # against v2 (after rollback)
    settings = _settings(release["root"])
    env = {"TFPIPE_HOME": str(settings.home), "TFPIPE_MODEL_STORE": store, "MLFLOW_TRACKING_URI": settings.tracking_uri}
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["rollback", "eta", "--to", "1"]) == 0
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    with pytest.raises(model_store.StaleBlessingError, match=r"rolled back to v1 \(champion change 5\)"):
        _push(trained, release, "eta", "run-4", blessing=in_flight)
    assert _served(release, "eta") == (1, [1], 1)
    # An old run's push cleared and run again does not re-promote the version that was rolled back:
    # its blessing was evaluated against v1 before the rollback made v1 champion again.
    old = json.loads((release["root"] / "evaluations" / "eta" / "run-3" / "blessing.json").read_text())
    with pytest.raises(model_store.StaleBlessingError, match=r"evaluated against v1 \(champion change 1\)"):
        _push(trained, release, "eta", "run-3", blessing=old)
    assert _served(release, "eta") == (1, [1], 1)


def test_a_retried_rollback_does_not_step_back_twice_and_a_failed_one_is_undone(trained, release, tmp_path):
    from tasks.release_steps import rollback_model

    for i in range(1, 4):
        _push(trained, release, "theta", f"run-{i}")
    settings = _settings(release["root"])
    store = settings.model_store
    first = rollback_model(settings, "theta", operation="rollback_model/run-a")
    assert first["to_version"] == 2 and not first["finished_a_retried_rollback"]
    again = rollback_model(settings, "theta", operation="rollback_model/run-a")  # Airflow's retry
    assert again["to_version"] == 2 and again["finished_a_retried_rollback"]
    assert model_store.read_champion(store, "theta")["version"] == 2
    assert rollback_model(settings, "theta", operation="rollback_model/run-b")["to_version"] == 1  # a new one steps
    # TensorFlow Serving that never serves the version: the rollback is undone.
    before = model_store.read_champion(store, "theta")
    with model_server(tmp_path / "other.config") as url:
        with pytest.raises(serving.ServingCheckError, match="the rollback to v3 was undone"):
            rollback_model(_settings(release["root"], serving_url=url), "theta", to_version=3, serving_timeout=2,
                           operation="rollback_model/run-c")
    assert model_store.read_champion(store, "theta") == before
    assert models_config.parse_models_config((Path(store) / "models.config").read_text())["theta"][1] == [1]
    # A damaged version is refused before anything changes.
    data = next((Path(store) / "theta" / "2" / "variables").glob("variables.data-*"))
    data.write_bytes(bytes(len(data.read_bytes())))
    with pytest.raises(serving.ServingCheckError, match="differs from the manifest"):
        rollback_model(settings, "theta", to_version=2, operation="rollback_model/run-d")
    assert model_store.read_champion(store, "theta") == before


def _flip_champions(store: str, name: str, rounds: int) -> None:
    """A process that keeps moving one model's champion and rewriting models.config."""
    for i in range(rounds):
        model_store.set_champion(store, name, 1 + i % 3, by=name, reason="race")
        models_config.write_models_config(store)


def test_models_config_agrees_with_every_pointer_after_processes_race(tmp_path):
    import multiprocessing

    store = tmp_path / "store"
    for name in ("a", "b", "c"):
        _fake_versions(store, name, 3)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_flip_champions, args=(str(store), name, 25 + 7 * i))
               for i, name in enumerate(("a", "b", "c"))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    served = models_config.parse_models_config((store / "models.config").read_text())
    assert {name: versions for name, (_, versions) in served.items()} == {
        name: [model_store.read_champion(str(store), name)["version"]] for name in ("a", "b", "c")}


def test_a_models_config_writer_that_read_the_pointers_first_cannot_write_last(tmp_path, monkeypatch):
    """Forced interleaving: X reads the pointers, Y moves one and rewrites the config, then X writes.
    X's read and write are one update, so Y's rewrite comes after it and the config is current."""
    import threading

    store = tmp_path / "store"
    for name in ("a", "b"):
        _fake_versions(store, name, 2)
        model_store.set_champion(str(store), name, 1, by="t", reason="push")
    real, x_read, y_wrote = models_config.champions, threading.Event(), threading.Event()

    def slow_for_x(where):
        found = real(where)
        if threading.current_thread().name == "X":
            x_read.set()
            y_wrote.wait(2)  # Y's config write waits for X's update to end, so this times out
        return found

    monkeypatch.setattr(models_config, "champions", slow_for_x)
    x = threading.Thread(target=models_config.write_models_config, args=(str(store),), name="X")
    x.start()
    assert x_read.wait(10)
    model_store.set_champion(str(store), "b", 2, by="y", reason="push")
    models_config.write_models_config(str(store))
    y_wrote.set()
    x.join(10)
    served = models_config.parse_models_config((store / "models.config").read_text())
    assert served["b"][1] == [2] and served["a"][1] == [1]


def test_gated_again_and_not_blessed_the_model_is_not_pushed(trained, release):
    store = _settings(release["root"]).model_store
    _push(trained, release, "iota", "run-1")
    late = _bless(trained, release, _settings(release["root"]), "iota", "run-2")
    _push(trained, release, "iota", "run-3")  # v2 promoted meanwhile
    result = _push(trained, release, "iota", "run-2", blessing=late,
                   **{"gate.metrics.accuracy.lower_bound": 1.01})  # the pipeline's gate, no model meets it
    assert result["pushed"] is False and any("FAILED" in reason for reason in result["reasons"])
    assert model_store.versions(store, "iota") == [1, 2] and _served(release, "iota") == (2, [2], 2)


def test_push_versions_increase_and_never_overwrite(trained, tmp_path):
    store = str(tmp_path / "store")
    blessing = blessing_for(trained["model"].uri)
    first = push_model(Path(trained["model"].saved_model_uri), blessing, store, "tiny", owner="a")
    before = {p: p.read_bytes() for p in Path(first.uri).rglob("*") if p.is_file()}
    second = push_model(Path(trained["model"].saved_model_uri), blessing, store, "tiny", owner="b")
    assert (first.version, second.version) == (1, 2)
    assert versions(store, "tiny") == [1, 2]
    assert {p: p.read_bytes() for p in Path(first.uri).rglob("*") if p.is_file()} == before
    assert (Path(second.uri) / "saved_model.pb").is_file()



def test_push_refuses_an_unblessed_model(trained, tmp_path):
    store = tmp_path / "store"
    with pytest.raises(PushError, match="not blessed"):
        push_model(Path(trained["model"].saved_model_uri),
                   blessing_for("m", blessed=False), str(store), "tiny", owner="a")
    assert not store.exists()



def test_concurrent_claims_get_distinct_versions(tmp_path):
    store = str(tmp_path / "store")
    claimed = run_concurrently(lambda i: claim_version(store, "m", f"w{i}"), 8)
    assert sorted(claimed) == list(range(1, 9))


def test_with_approval_required_only_an_approved_run_pushes(trained, release):
    from tasks.release.approval import record_decision, review_body

    store = _settings(release["root"]).model_store
    required = {"push.approval": "required"}
    waiting = _push(trained, release, "reviewed", "review-1", **required)
    assert waiting["pushed"] is False and "no reviewer approved" in waiting["reasons"][0]
    record_decision(store, "reviewed", False, "reviewer-b", "wait for the new labels", "tiny/review-1")
    rejected = _push(trained, release, "reviewed", "review-1", **required)
    assert rejected["pushed"] is False and "reviewer-b rejected" in rejected["reasons"][0]
    assert model_store.versions(store, "reviewed") == [] and model_store._claimed(store, "reviewed") == set()
    # Another run's approval is not this run's.
    record_decision(store, "reviewed", True, "reviewer-a", "fine", "tiny/review-2")
    assert _push(trained, release, "reviewed", "review-1", **required)["pushed"] is False
    record_decision(store, "reviewed", True, "reviewer-a", "looks right", "tiny/review-1")
    pushed = _push(trained, release, "reviewed", "review-1", **required)
    assert pushed["version"] == 1 and pushed["model_card"] is not None
    assert [e["event"] for e in audit.history(store, "reviewed")] == ["rejected", "approved", "approved", "promoted"]
    import mlflow.artifacts

    card = mlflow.artifacts.load_text(pushed["model_card"]["uri"].replace(".html", ".md"))
    assert "approved by reviewer-a" in card and "looks right" in card
    # What the reviewer reads: the checks, the metrics and the candidate's model card.
    from tasks.release_review import review_request

    ctx = make_context(release["pipeline"], run_id="review-3", settings=_settings(release["root"]),
                       overrides={"model_name": "reviewed"})
    subject, asked = review_request(ctx, {"ingest_examples": trained["examples"].to_dict(),
                                          "train_model": trained["model"].to_dict(),
                                          "evaluate_model": release["blessing"].to_dict(),
                                          "optimize_model": release["optimized"]}, {})
    assert subject == "Release reviewed: push the model of run review-3?" and "the champion **v1**" in asked
    assert "- Model card (candidate): http://127.0.0.1:5000/#/experiments/" in asked
    candidate = mlflow.artifacts.load_text(
        _client(release).get_run(_parent_id(release, "review-3")).info.artifact_uri + "/model_card/candidate.md")
    assert "the candidate of run review-3 (awaiting approval)" in candidate and "## Known limits" in candidate
    # What the data says is kept out of the markup.
    blessing = release["blessing"]
    body = review_body("reviewed", blessing, 1, {"MLflow run": "http://127.0.0.1:5000/#/x"})
    assert "| accuracy | (overall) | lower_bound |" in body and "the champion **v1**" in body
    assert "- MLflow run: http://127.0.0.1:5000/#/x" in body
    hostile = review_body("eta|<b>", blessing, None, {})
    assert "eta\\|\\<b\\>" in hostile and "no champion" in hostile


def _parent_id(release, run_id: str) -> str:
    client = _client(release)
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.`tfpipe.role` = 'pipeline' and tags.`tfpipe.run_id` = '{run_id}'")
    return parent.info.run_id
