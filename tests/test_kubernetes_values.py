"""The Kubernetes deployment (docker/kubernetes/): the Helm values are checked against the
official chart's own values schema, as `helm install` checks them, and the pod templates against
Kubernetes' OpenAPI schemas (kubernetes-validate, strict). No cluster is started here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "docker" / "kubernetes" / "airflow-values.yaml"
GPU_TEMPLATE = REPO / "docker" / "kubernetes" / "gpu-pod-template.yaml"
CHART_SCHEMA = REPO / "tests" / "data" / "airflow-chart" / "values.schema.json"
KUBERNETES = "1.33"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_values_are_valid_for_the_official_chart(values):
    schema = json.loads(CHART_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    broken = {**values, "executor": "kubernetes"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)
    with pytest.raises(jsonschema.ValidationError):  # a misspelled key is refused, as helm refuses it
        jsonschema.Draft7Validator(schema).validate({**values, "images": {**values["images"], "airflw": {}}})


def test_control_plane_and_task_images_and_no_secret_in_values(values):
    from tasks.settings import ENVIRONMENT

    assert values["executor"] == "KubernetesExecutor"
    assert values["images"]["airflow"]["repository"].endswith("tfpipe-control-plane")
    assert values["images"]["pod_template"]["repository"].endswith("/tfpipe")
    assert values["config"]["core"]["auth_manager"].endswith("FabAuthManager")
    assert values["config"]["logging"]["remote_log_conn_id"] == "aws_default"
    text = VALUES.read_text()
    assert not re.search(r"(?i)(password|secret_key|access_key)\s*:\s*\S", text.replace("SecretName", ""))
    assert values["apiServer"]["defaultUser"]["enabled"] is False
    secret_refs = {values["data"]["metadataSecretName"], values["fernetKeySecretName"],
                   values["apiSecretKeySecretName"], values["jwtSecretName"]}
    assert all(name.startswith("tfpipe-") for name in secret_refs)
    # What the code reads reaches the components: the pipelines here, the rest from tfpipe-env.
    assert {e["name"] for e in values["env"]} >= {"TFPIPE_PIPELINES_DIR", "TFPIPE_TRAIN_POD_TEMPLATE"}
    assert "tfpipe-env" in values["extraEnvFrom"] and "TFPIPE_ARTIFACT_ROOT" in ENVIRONMENT


def _pods(values) -> list[tuple[str, dict]]:
    return [("podTemplate", yaml.safe_load(values["podTemplate"])), ("gpu", yaml.safe_load(GPU_TEMPLATE.read_text()))]


def test_pod_templates_are_valid_pods_on_the_tensorflow_image(values):
    for name, pod in _pods(values):
        kubernetes_validate.validate(pod, KUBERNETES, strict=True)
        (container,) = pod["spec"]["containers"]
        assert container["name"] == "base", name  # the container the KubernetesExecutor runs the task in
        assert container["image"].startswith("registry.example/tfpipe:0.1.0"), name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"], name
        assert not any(k.startswith("AWS_") or "SQL_ALCHEMY" in k for k in (e["name"] for e in container.get("env", [])))
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/var/lib/tfpipe/airflow/airflow.cfg"]["subPath"] == "airflow.cfg"  # the worker image's AIRFLOW_HOME
        assert {"name": "config", "configMap": {"name": "tfpipe-config"}} in pod["spec"]["volumes"]
    gpu = dict(_pods(values))["gpu"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["containers"][0]["image"].endswith("-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])


def test_the_gpu_template_is_where_the_values_and_the_image_put_it(values):
    (path,) = [e["value"] for e in values["env"] if e["name"] == "TFPIPE_TRAIN_POD_TEMPLATE"]
    control = (REPO / "docker" / "control-plane.Dockerfile").read_text()
    assert f"COPY --chown=airflow:0 docker/kubernetes/gpu-pod-template.yaml {path}" in control
    assert "apache-airflow-providers-cncf-kubernetes==" in control  # the KubernetesExecutor


def test_training_jobs_rbac_lets_the_workers_and_triggerer_manage_them(values):
    """train.runner: kubernetes: the workers submit and delete Jobs and Services, the triggerer
    reads Jobs, and the pods run as the service account the values name."""
    docs = list(yaml.safe_load_all((REPO / "docker" / "kubernetes" / "training-rbac.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    by_kind = {doc["kind"]: doc for doc in docs}
    env = {e["name"]: e.get("value") for e in values["env"]}
    assert by_kind["ServiceAccount"]["metadata"]["name"] == env["TFPIPE_TRAIN_SERVICE_ACCOUNT"]
    assert {doc["metadata"]["namespace"] for doc in docs} == {env["TFPIPE_TRAIN_NAMESPACE"]}
    bound = {s["name"] for s in by_kind["RoleBinding"]["subjects"]}
    assert bound == {values["workers"]["serviceAccount"]["name"], values["triggerer"]["serviceAccount"]["name"]}
    granted = {(group, resource): set(rule["verbs"]) for rule in by_kind["Role"]["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"create", "get", "list", "delete"} <= granted[("batch", "jobs")]  # tasks/training/kubernetes_runner.py
    assert {"create", "get", "list", "delete"} <= granted[("", "services")]
    image = values["images"]["pod_template"]
    assert env["TFPIPE_TRAIN_IMAGE"] == f"{image['repository']}:{image['tag']}"
    from tasks.training.kubernetes_runner import Placement

    assert Placement.from_env(env).service_account == "tfpipe-training"  # the values pass its checks
