"""The production stack (docker/) is consistent: images cannot be pulled on these machines, so the
compose file is checked as compose would read it, with a .env that docker/make_env.py made."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"
_REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)(?::([?-])([^}]*))?\}")
# Where each service listens inside the network (the image's fixed port, or its command's flag).
_ONE_SHOT = {"minio-init", "airflow-init"}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("docker") / ".env"
    subprocess.run([sys.executable, str(DOCKER / "make_env.py"), "--out", str(out)], check=True, capture_output=True)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    lines = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def raw() -> str:
    return (DOCKER / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose(raw, env) -> dict:
    """compose.yaml with ${...} substituted from the generated .env, as compose does."""
    def substitute(match: re.Match) -> str:
        name, kind, default = match.groups()
        if name in env:
            return env[name]
        assert kind == "-", f"${{{name}}} is neither in .env nor given a default"
        return default

    text = _REFERENCE.sub(substitute, raw.replace("$$", "\0"))
    return yaml.safe_load(text.replace("\0", "$"))


def _listens(service: dict, name: str) -> set[int]:
    command = " ".join(service.get("command", [])) if isinstance(service.get("command"), list) else \
        str(service.get("command", ""))
    ports = {int(p) for p in re.findall(r"--(?:port|rest_api_port|address)[= ]:?(\d+)", command)}
    fixed = {"postgres": {5432}, "minio": {9000}}  # the images' own ports
    return ports | fixed.get(name, set())


def test_make_env_writes_fresh_secrets_and_refuses_to_overwrite(env, tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("make_env", DOCKER / "make_env.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    other = module.values()
    for name in module.SECRETS:
        assert len(env[name]) >= 32 and env[name] != other[name], name
    target = tmp_path / ".env"
    target.write_text("keep")
    assert module.main(["--out", str(target)]) == 1 and target.read_text() == "keep"


def test_secrets_have_no_default_in_the_compose_file(raw, env):
    for name, kind, _ in _REFERENCE.findall(raw.replace("$$", "")):  # $$ is a literal $ for the container
        if any(word in name for word in ("PASSWORD", "SECRET", "KEY", "USER")):
            assert kind == "?", f"{name} must be required (${{{name}:?...}}), never defaulted"
    # Every secret-looking setting is nothing but a reference to .env.
    parsed = yaml.safe_load(raw)
    for name, service in parsed["services"].items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|FERNET", key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", str(value)), (name, key, value)


def test_every_setting_the_code_reads_is_provided(compose):
    from tasks.settings import ENVIRONMENT

    services = compose["services"]
    boto3 = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-scheduler-gpu", "airflow-dag-processor",
                 "airflow-triggerer", "serving-sync"):
        environment = services[name]["environment"]
        missing = [k for k in (*ENVIRONMENT, *boto3) if k not in environment and k != "AIRFLOW__API__BASE_URL"]
        assert missing == [], (name, missing)
    airflow = services["airflow-scheduler"]["environment"]
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__API__BASE_URL"):
        assert airflow[key], key
    # One JWT secret and one Fernet key for every Airflow component.
    components = [s for n, s in services.items() if n.startswith("airflow-")]
    assert len({s["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for s in components}) == 1
    assert len({s["environment"]["AIRFLOW__CORE__FERNET_KEY"] for s in components}) == 1


def test_services_reach_each_other_by_name_and_port(compose):
    services = compose["services"]
    urls = []
    for name, service in services.items():
        environment = service.get("environment", {})
        values = list(environment.values()) if isinstance(environment, dict) else []
        command = service.get("command", [])
        values += command if isinstance(command, list) else [command]
        for value in values:
            urls += [(name, u) for u in re.findall(r"(?:https?|postgresql\+psycopg2)://[^\s,'\"]+", str(value))]
    internal = [(name, urlparse(url)) for name, url in urls if urlparse(url).hostname not in ("127.0.0.1", "0.0.0.0")]
    assert {u.hostname for _, u in internal} >= {"mlflow", "minio", "tf-serving", "postgres", "airflow-apiserver"}
    for client, url in internal:
        assert url.hostname in services, f"{client}: {url.geturl()} names no service"
        assert url.port in _listens(services[url.hostname], url.hostname), f"{client}: {url.geturl()}: wrong port"
    databases = {urlparse(u).path.strip("/") for _, u in urls if u.startswith("postgresql")}
    init = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert databases == {"airflow", "mlflow"}
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "airflow" and "CREATE DATABASE mlflow" in init


def test_images_are_pinned(compose, env):
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), (name, image)
    assert env["TFPIPE_IMAGE"].split(":")[1][0].isdigit()


def test_health_checks_ordering_volumes_and_ports(compose):
    services = compose["services"]
    for name, service in services.items():
        if name not in _ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, (name, dependency)
            wanted = "service_completed_successfully" if dependency in _ONE_SHOT else "service_healthy"
            assert rule["condition"] == wanted, (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), (name, source)
            else:
                assert source in compose["volumes"], (name, source)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert services["tf-serving"]["volumes"] == ["serving-models:/models:ro"]
    assert "serving-models:/models" in services["serving-sync"]["volumes"]
    assert "--model_config_file=/models/models.config" in services["tf-serving"]["command"]
    assert services["serving-sync"]["command"][:3] == ["tfpipe", "serving-sync", "/models"]


def test_one_scheduler_per_profile(compose, env):
    services = compose["services"]
    schedulers = {n: s.get("profiles") for n, s in services.items() if s.get("command", [None])[:2] == ["airflow", "scheduler"]}
    assert schedulers == {"airflow-scheduler": ["cpu"], "airflow-scheduler-gpu": ["gpu"]}
    assert env["COMPOSE_PROFILES"] == "cpu"
    gpu = services["airflow-scheduler-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]


def test_image_is_bookworm_python_311_locked_and_not_root():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"python:3\.11\.\d+-slim-bookworm", dockerfile)
    assert "uv sync --locked --no-dev" in dockerfile and "UV_COMPILE_BYTECODE=1" in dockerfile
    for folder in ("tasks", "dags", "plugins"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
