import pytest

from tasks.config import ConfigError, load_pipeline, parse_overrides
from tasks.context import make_context
from tasks.trigger import overrides_from_params, param_specs
from tasks.settings import Settings


SHIPPED = Settings.from_env({}).pipelines_dir  # dags/pipelines


def test_shipped_penguins_pipeline_is_valid():
    config = load_pipeline("penguins", pipelines_dir=SHIPPED)
    assert config.name == "penguins"
    assert config.task.value == "multiclass"
    assert config.label == "species"
    assert config.schedule == "@daily"


def test_overrides_are_validated_like_the_file(pipeline_file):
    config = load_pipeline(pipeline_file, parse_overrides(["train.epochs=7", "gate.metrics.accuracy.lower_bound=0.9"]))
    assert config.train.epochs == 7
    assert config.gate.metrics["accuracy"].lower_bound == 0.9


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"train.epoch": 3}, "train.epoch: unknown key"),
        ({"train.epochs": 0}, "train.epochs"),
        ({"train.strategy": "tpu"}, "train.strategy"),
        ({"data.split": {"train": 0.5, "eval": 0.2}}, "data.split"),
        ({"task": "ranking"}, "task"),
        ({"gate.slices": [{"feature": "species"}]}, "gate.slices.0.feature: the label"),
        ({"gate.slices": [{"feature": "island", "min_examples": 0}]}, "gate.slices.0.min_examples"),
        ({"optimize.variants": ["tflite_int4"]}, "got 'tflite_int4'"),
        ({"push.keep_versions": 0}, "push.keep_versions"),
    ],
)
def test_bad_key_is_named(pipeline_file, override, named):
    with pytest.raises(ConfigError) as error:
        load_pipeline(pipeline_file, override)
    assert named in str(error.value)
    assert str(pipeline_file) in str(error.value)


def test_qat_int8_is_an_opt_in_variant(pipeline_file):
    assert "qat_int8" not in load_pipeline(pipeline_file).optimize.variants
    config = load_pipeline(pipeline_file, {"optimize.variants": ["tflite_int8", "qat_int8"], "optimize.qat.epochs": 2})
    assert config.optimize.variants == ["tflite_int8", "qat_int8"] and config.optimize.qat.epochs == 2


def test_missing_required_key_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: {source: x.csv}\ntask: binary\n")
    with pytest.raises(ConfigError, match="label: required key is missing"):
        load_pipeline(path)


def test_unknown_pipeline_lists_known_ones():
    with pytest.raises(ConfigError, match="penguins"):
        load_pipeline("no_such_pipeline", pipelines_dir=SHIPPED)


def test_pipeline_names_are_looked_up_in_the_pipelines_dir_setting(tmp_path, pipeline_file):
    """TFPIPE_PIPELINES_DIR moves where names are found; a name is never a path."""
    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path / "home"), "TFPIPE_PIPELINES_DIR": str(tmp_path)})
    assert settings.pipelines_dir == tmp_path.resolve()
    (tmp_path / "mine.yaml").write_text(pipeline_file.read_text())
    assert load_pipeline("mine", pipelines_dir=settings.pipelines_dir).name == "mine"
    with pytest.raises(ConfigError, match="known: mine, tiny"):
        load_pipeline("penguins", pipelines_dir=settings.pipelines_dir)
    with pytest.raises(ConfigError, match="neither a pipeline name"):
        load_pipeline("../mine", pipelines_dir=settings.pipelines_dir)
    with pytest.raises(ConfigError, match="no pipelines directory"):
        load_pipeline("mine")


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])


def test_trigger_form_covers_training_source_and_gate(pipeline_file):
    specs = {p.name: p for p in param_specs(load_pipeline(pipeline_file))}
    assert {"epochs", "batch_size", "learning_rate", "data_source", "accuracy_threshold"} <= set(specs)
    assert specs["epochs"].default == 3 and specs["epochs"].minimum == 1
    assert specs["accuracy_threshold"].key == "gate.metrics.accuracy.lower_bound"
    assert all(p.description for p in specs.values())


def test_params_then_set_overrides_apply_in_order(pipeline_file, tmp_path):
    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path)})
    ctx = make_context(pipeline_file, "r1", settings, overrides={"train.epochs": 9},
                       params={"epochs": 4, "learning_rate": 0.5, "accuracy_threshold": 0.99, "data_source": ""})
    assert ctx.config.train.epochs == 9
    assert ctx.config.train.learning_rate == 0.5
    assert ctx.config.gate.metrics["accuracy"].lower_bound == 0.99
    assert ctx.config.data.source == load_pipeline(pipeline_file).data.source


def test_unrelated_params_are_ignored(pipeline_file):
    assert overrides_from_params(load_pipeline(pipeline_file), {"something_else": 1}) == {}


def test_settings_defaults_and_overrides(tmp_path):
    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path)})
    assert settings.artifact_root == str(tmp_path / "artifacts")
    assert settings.model_store == str(tmp_path / "model_store")
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    remote = Settings.from_env({"TFPIPE_HOME": str(tmp_path), "TFPIPE_MODEL_STORE": "s3://b/store",
                                "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert remote.model_store == "s3://b/store"
    assert remote.mlflow_artifact_location is None
    assert settings.serving_url is None
    serving = Settings.from_env({"TFPIPE_HOME": str(tmp_path), "TFPIPE_SERVING_URL": "http://127.0.0.1:8501",
                                 "TFPIPE_SERVING_BASE_PATH": "/models"})
    assert (serving.serving_url, serving.serving_base_path) == ("http://127.0.0.1:8501", "/models")


def test_every_variable_settings_read_is_listed(tmp_path):
    """settings.ENVIRONMENT is what a deployment must provide (the docker stack is checked against it)."""
    from dataclasses import asdict

    from tasks.settings import ENVIRONMENT

    base = {"TFPIPE_HOME": str(tmp_path)}
    plain = asdict(Settings.from_env(base))
    for name in ENVIRONMENT:
        value = "http://127.0.0.1:1" if "URL" in name or name == "MLFLOW_TRACKING_URI" else str(tmp_path / "x")
        changed = asdict(Settings.from_env({**base, name: value}))
        assert changed != plain or name == "TFPIPE_HOME", name


def test_usable_cpus_follow_the_cpu_affinity():
    """Thread pools size themselves to the cores a process may use (taskset, a cpuset), not the machine's."""
    import os
    import subprocess
    import sys

    from tasks.settings import usable_cpus

    assert usable_cpus() == len(os.sched_getaffinity(0))
    first = min(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", "from tasks.settings import usable_cpus; print(usable_cpus())"],
        preexec_fn=lambda: os.sched_setaffinity(0, {first}), capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "1"


def test_graph_options_name_tensorflows_passes(pipeline_file):
    config = load_pipeline(pipeline_file, {"train.graph_options.remapping": False,
                                           "train.graph_options.constant_folding": True})
    assert config.train.graph_options.tf_options() == {"constant_folding": True, "remapping": False}
    assert load_pipeline(pipeline_file).train.graph_options.tf_options() == {}  # TensorFlow's own defaults
    everything_off = load_pipeline(pipeline_file, {"train.graph_options.disable_meta_optimizer": True})
    assert everything_off.train.graph_options.tf_options() == {"disable_meta_optimizer": True}
    with pytest.raises(ConfigError, match="memory_optimizer"):
        load_pipeline(pipeline_file, {"train.graph_options.memory_optimizer": False})
