"""A trigger conf is data, never code: sources within what the YAML allows, gates only stricter."""

import pytest

from tasks.config import ConfigError, config_from_mapping
from tasks.errors import DataError
from tasks.context import make_context
from tasks.trigger import overrides_from_params, param_specs
from tasks.settings import Settings
from tasks.sources import render_sources
from tests.helpers import write_pipeline


def _config(**data):
    return config_from_mapping({"name": "daily", "data": {"source": "/data/date={{ ds }}/part-*.csv", **data},
                                "label": "y", "task": "binary",
                                "gate": {"metrics": {"accuracy": {"lower_bound": 0.8}}}}, "daily.yaml")


def _payload(marker):
    return "{{ lipsum.__globals__['os'].popen('touch " + str(marker) + "').read() }}"


def test_a_template_payload_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError, match="no other template syntax is allowed"):
        overrides_from_params(_config(), {"data_source": _payload(marker)})
    with pytest.raises(DataError, match="no other template syntax is allowed"):  # in a YAML too
        render_sources([_payload(marker)], {"ds": "2026-01-01"})
    for payload in ("/data/{{ config.items() }}/x.csv", "/data/{% include '/etc/passwd' %}", "/data/{{ ds.__class__ }}"):
        with pytest.raises(ConfigError):
            overrides_from_params(_config(), {"data_source": payload})
    assert not marker.exists()


@pytest.mark.parametrize("source", [
    "/etc/passwd", "/data/date=2026-01-01/../../../etc/passwd", "/data/date=x/sub/part-1.csv",
    "s3://another-bucket/date=2026-01-01/part-1.csv", "file:///data/date=2026-01-01/part-1.csv",
    "/data/date=2026-01-01/part-1.csv" + "x" * 2000, "/data/date=2026-01-01/part-1.csv\n/etc/passwd", 42,
])
def test_a_source_outside_what_the_yaml_allows_is_refused(source):
    with pytest.raises(ConfigError, match="trigger conf"):
        overrides_from_params(_config(), {"data_source": source})


def test_sources_the_yaml_allows_are_accepted():
    assert overrides_from_params(_config(), {"data_source": "/data/date=2026-01-01/part-3.csv"}) == {
        "data.source": ["/data/date=2026-01-01/part-3.csv"]}
    assert overrides_from_params(_config(), {"data_source": "/data/date={{ ds }}/part-*.csv"}) == {}
    wider = _config(trigger_sources=["/data/**", "s3://lake/churn/*.parquet"])
    assert overrides_from_params(wider, {"data_source": "/data/archive/2025/all.csv"})
    assert overrides_from_params(wider, {"data_source": "s3://lake/churn/2026.parquet"})
    with pytest.raises(ConfigError):
        overrides_from_params(wider, {"data_source": "s3://lake/churn/sub/2026.parquet"})  # * stays in a segment


def test_a_trigger_can_only_make_the_gate_stricter():
    config = _config()
    assert overrides_from_params(config, {"accuracy_threshold": 0.9}) == {"gate.metrics.accuracy.lower_bound": 0.9}
    with pytest.raises(ConfigError, match="cannot be set below the pipeline's 0.8"):
        overrides_from_params(config, {"accuracy_threshold": 0.0})
    spec = {p.name: p for p in param_specs(config)}["accuracy_threshold"]
    assert spec.minimum == 0.8 and spec.maximum == 1.0  # the form itself refuses a looser value


def test_the_run_id_cannot_walk_out_of_a_templated_path():
    with pytest.raises(DataError, match="cannot be part of a path"):
        render_sources(["/data/{{ run_id }}/x.csv"], {"run_id": "../../etc"})


def test_a_hostile_conf_fails_before_any_run_or_file_exists(tmp_path):
    settings = Settings.from_env({"TFPIPE_HOME": str(tmp_path / "home")})
    pipeline = write_pipeline(tmp_path)
    with pytest.raises(ConfigError, match="is not among the sources pipeline 'tiny' allows"):
        make_context(pipeline, "r1", settings, params={"data_source": "/etc/passwd"})
    assert not (tmp_path / "home").exists()
