"""The container path (docker/) is consistent: images cannot be pulled on these machines, so the
compose file is checked as compose would read it, with the .env and s3.json that
docker/make_env.py made; the images' Dockerfiles against uv.lock; and the control plane's
claim that parsing the DAGs needs no ML stack, by parsing them with that stack unimportable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
_REFERENCE = re.compile(r"\$\{([A-Z0-9_]+)(?::([?-])([^}]*))?\}")
_ONE_SHOT = {"s3-init", "airflow-init"}
_DIGEST = re.compile(r"^[a-z0-9./-]+:[\w.-]*\d[\w.-]*@sha256:[0-9a-f]{64}$")
CONTROL = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
WORKERS = ("airflow-worker", "airflow-worker-gpu")
# The secrets each service may hold (anything else secret-looking in its environment fails).
ALLOWED_SECRETS = {
    "postgres": {"POSTGRES_PASSWORD", "POSTGRES_AIRFLOW_PASSWORD", "POSTGRES_MLFLOW_PASSWORD"},
    "redis": {"REDIS_PASSWORD", "REDISCLI_AUTH"},
    "s3-init": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "mlflow": {"POSTGRES_MLFLOW_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "airflow-init": {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY",
                     "AIRFLOW_ADMIN_PASSWORD", "S3_TASKS_ACCESS_KEY", "S3_TASKS_SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL",
                     "AIRFLOW__CELERY__RESULT_BACKEND"},
    "airflow-apiserver": {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY",
                          "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"},
    **{name: {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CELERY__BROKER_URL",
              "AIRFLOW__CELERY__RESULT_BACKEND"} for name in CONTROL[2:]},
    **{name: {"AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND"} for name in WORKERS},
    "serving-sync": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "tf-serving": set(),
    "s3": set(),
}


def _make_env(folder: Path) -> dict[str, str]:
    out = folder / ".env"
    subprocess.run([sys.executable, str(DOCKER / "make_env.py"), "--out", str(out)], check=True, capture_output=True)
    lines = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docker")
    _make_env(folder)
    return folder


@pytest.fixture(scope="module")
def env(made) -> dict[str, str]:
    lines = [line for line in (made / ".env").read_text().splitlines() if line and not line.startswith("#")]
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


def _text(service: dict) -> str:
    command = service.get("command", [])
    return " ".join(command) if isinstance(command, list) else str(command)


def _listens(service: dict, name: str) -> set[int]:
    ports = {int(p) for p in re.findall(r"-(?:-port|-rest_api_port|s3\.port)[= ]:?(\d+)", _text(service))}
    fixed = {"postgres": {5432}, "redis": {6379}}  # the images' own ports
    return ports | fixed.get(name, set())


def test_make_env_writes_fresh_private_secrets_and_refuses_to_overwrite(made, env, tmp_path):
    from importlib import util

    for name in (".env", "s3.json"):
        assert oct((made / name).stat().st_mode & 0o777) == "0o600", name
    spec = util.spec_from_file_location("make_env", DOCKER / "make_env.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    other = module.values()
    for name in (*module.SECRETS, "AIRFLOW_FERNET_KEY", *(k for k in env if k.startswith("S3_"))):
        assert len(env[name]) >= 19 and env[name] != other[name], name
    (tmp_path / "s3.json").write_text("keep")
    assert module.main(["--out", str(tmp_path / ".env")]) == 1
    assert (tmp_path / "s3.json").read_text() == "keep" and not (tmp_path / ".env").exists()


def test_each_s3_identity_is_limited_to_what_its_client_does(made, env):
    identities = {i["name"]: i for i in json.loads((made / "s3.json").read_text())["identities"]}
    for name, identity in identities.items():
        (credential,) = identity["credentials"]
        assert credential == {"accessKey": env[f"S3_{name.upper()}_ACCESS_KEY"],
                              "secretKey": env[f"S3_{name.upper()}_SECRET_KEY"]}
    bucket, mlflow = env["TFPIPE_BUCKET"], env["MLFLOW_BUCKET"]
    assert sorted(identities["serving"]["actions"]) == [f"List:{bucket}", f"Read:{bucket}"]
    assert all(a.endswith(f":{bucket}") for a in identities["tasks"]["actions"])
    assert all(a.endswith(f":{mlflow}") for a in identities["mlflow"]["actions"])
    assert "Admin" in identities["admin"]["actions"]


def test_secrets_have_no_default_in_the_compose_file(raw):
    for name, kind, _ in _REFERENCE.findall(raw.replace("$$", "")):  # $$ is a literal $ for the container
        if any(word in name for word in ("PASSWORD", "SECRET", "KEY")):
            assert kind == "?", f"{name} must be required (${{{name}:?...}}), never defaulted"


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    return {k: str(v) for k, v in environment.items()}


def _holds_secret(key: str, value: str) -> bool:
    return bool(re.search(r"PASSWORD|SECRET|FERNET|ACCESS_KEY|REDISCLI_AUTH", key)) or bool(
        re.match(r"\w+(\+\w+)?://[^/@\s]*:[^/@\s]+@", value))  # a URL with a password in it


def test_each_service_gets_only_the_secrets_it_needs(compose):
    services = compose["services"]
    assert set(services) == set(ALLOWED_SECRETS)
    for name, service in services.items():
        held = {k for k, v in _environment(service).items() if _holds_secret(k, v)}
        assert held <= ALLOWED_SECRETS[name], (name, sorted(held - ALLOWED_SECRETS[name]))
    for name in WORKERS:  # the tasks' S3 access is the Airflow connection, read through the API
        environment = _environment(services[name])
        assert not any(k.startswith("AWS_") for k in environment), name
    for name in CONTROL[1:]:
        assert not any(k.startswith(("AWS_", "S3_")) for k in _environment(services[name])), name
    # One JWT secret for the components that sign or check task tokens.
    assert len({_environment(services[n])["AIRFLOW__API_AUTH__JWT_SECRET"] for n in CONTROL}) == 1


def test_every_setting_the_code_reads_is_provided(compose):
    from tasks.settings import ENVIRONMENT

    services = compose["services"]
    for name in (*WORKERS, *CONTROL):
        environment = _environment(services[name])
        missing = [k for k in ENVIRONMENT if k not in environment and k != "AIRFLOW__API__BASE_URL"]
        assert missing == [], (name, missing)
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert environment["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
        assert environment["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"
    for name in CONTROL:
        assert _environment(services[name])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    serving = _environment(services["serving-sync"])
    assert {"TFPIPE_MODEL_STORE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(serving)
    assert "airflow connections add aws_default" in _text(services["airflow-init"])


def test_services_reach_each_other_by_name_and_port(compose):
    services = compose["services"]
    urls = []
    for name, service in services.items():
        for value in [*_environment(service).values(), _text(service)]:
            urls += [(name, u) for u in re.findall(r"(?:https?|postgresql\+psycopg2|redis)://[^\s,'\"]+", value)]
    internal = [(name, urlparse(url)) for name, url in urls if urlparse(url).hostname not in ("127.0.0.1", "0.0.0.0")]
    assert {u.hostname for _, u in internal} >= {"mlflow", "s3", "tf-serving", "postgres", "redis", "airflow-apiserver"}
    for client, url in internal:
        assert url.hostname in services, f"{client}: {url.geturl()} names no service"
        assert url.port in _listens(services[url.hostname], url.hostname), f"{client}: {url.geturl()}: wrong port"
    databases = {(u.username, u.path.strip("/")) for _, u in internal if u.scheme.startswith("postgresql")}
    assert databases == {("airflow", "airflow"), ("mlflow", "mlflow")}
    init = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert "CREATE DATABASE airflow OWNER airflow" in init and "CREATE DATABASE mlflow OWNER mlflow" in init


def test_third_party_images_are_pinned_by_digest_and_ours_are_built(compose, env):
    ours = {env["TFPIPE_IMAGE"], env["TFPIPE_IMAGE"] + "-gpu", env["TFPIPE_CONTROL_IMAGE"], env["TFPIPE_MLFLOW_IMAGE"]}
    for name, service in compose["services"].items():
        image = service["image"]
        if image in ours:
            assert re.search(r":\d", image), (name, image)
        elif name == "tf-serving":  # no digest resolvable here: pinned by tag, said so in compose.yaml
            assert image == "tensorflow/serving:2.16.1"
        else:
            assert _DIGEST.match(image), f"{name}: {image} is not pinned by digest"
    for dockerfile in ("Dockerfile", "control-plane.Dockerfile", "mlflow.Dockerfile"):
        (base,) = re.findall(r"^ARG \w+_IMAGE=(\S+)", (DOCKER / dockerfile).read_text(), re.MULTILINE)
        assert _DIGEST.match(base), f"{dockerfile}: {base} is not pinned by digest"
    assert compose["services"]["mlflow"]["build"]["dockerfile"] == "mlflow.Dockerfile"


def _locked() -> dict[str, str]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"]}


def test_images_install_what_uv_lock_locks():
    locked = _locked()
    for dockerfile in ("control-plane.Dockerfile", "mlflow.Dockerfile"):
        pins = dict(re.findall(r'"([a-z0-9-]+)==([\w.]+)"', (DOCKER / dockerfile).read_text()))
        assert pins, dockerfile
        for name, version in pins.items():
            assert locked.get(name) == version, (dockerfile, name, version, locked.get(name))
    control = (DOCKER / "control-plane.Dockerfile").read_text()
    assert f"AIRFLOW_VERSION={locked['apache-airflow']}" in control
    assert f"apache/airflow:{locked['apache-airflow']}-python3." in control
    for provider in ("celery", "fab", "amazon"):
        assert f"apache-airflow-providers-{provider}==" in control


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
                assert (DOCKER / source).exists() or source == "./s3.json", (name, source)
            elif ":" in volume:
                assert source in compose["volumes"], (name, source)
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert services["tf-serving"]["volumes"] == ["serving-models:/models:ro"]
    assert "serving-models:/models" in services["serving-sync"]["volumes"]
    assert "--model_config_file=/models/models.config" in services["tf-serving"]["command"]
    assert services["serving-sync"]["command"][:3] == ["tfpipe", "serving-sync", "/models"]
    assert "./s3.json:/etc/seaweedfs/s3.json:ro" in services["s3"]["volumes"]


def test_the_scheduler_schedules_and_the_workers_run_tasks(compose, env):
    services = compose["services"]
    commands = {n: s.get("command", [None]) for n, s in services.items()}
    assert [n for n, c in commands.items() if c[:2] == ["airflow", "scheduler"]] == ["airflow-scheduler"]
    assert services["airflow-scheduler"]["image"] == env["TFPIPE_CONTROL_IMAGE"]
    workers = {n: s.get("profiles") for n, s in services.items() if commands[n][:3] == ["airflow", "celery", "worker"]}
    assert workers == {"airflow-worker": ["cpu"], "airflow-worker-gpu": ["gpu"]}
    assert services["airflow-worker"]["image"] == env["TFPIPE_IMAGE"]  # the TensorFlow image
    assert env["COMPOSE_PROFILES"] == "cpu"
    gpu = services["airflow-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for name in CONTROL:  # Airflow's own image: no TensorFlow there
        assert services[name]["image"] == env["TFPIPE_CONTROL_IMAGE"], name


def test_worker_image_is_bookworm_python_311_locked_and_not_root():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"python:3\.11\.\d+-slim-bookworm@sha256:", dockerfile)
    assert "uv sync --locked --no-dev" in dockerfile and "UV_COMPILE_BYTECODE=1" in dockerfile
    for folder in ("tasks", "dags", "plugins"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


def test_the_control_plane_parses_the_dags_without_the_ml_stack(tmp_path):
    """What the control-plane image holds is enough to parse every DAG: TensorFlow, TFDV, Beam,
    MLflow and scikit-learn are made unimportable, and the DAG bag has no import error."""
    probe = (
        "import sys\n"
        "for m in ('tensorflow', 'tensorflow_data_validation', 'tfx_bsl', 'apache_beam', 'mlflow', 'sklearn',\n"
        "          'tf_keras', 'tensorflow_model_optimization'):\n"
        "    sys.modules[m] = None\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(REPO / 'dags')!r})\n"
        "print(sorted(bag.dag_ids)); print(bag.import_errors)\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TFPIPE_"))},
           "AIRFLOW_HOME": str(tmp_path / "airflow"), "TFPIPE_HOME": str(tmp_path / "home"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dag_ids, errors = done.stdout.strip().splitlines()[-2:]
    assert errors == "{}" and "penguins" in dag_ids and "serving_check" in dag_ids
