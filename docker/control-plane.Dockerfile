# The control plane: Airflow's own image with the providers tfpipe's deployment uses (Celery,
# Kubernetes, FAB, Amazon), and tfpipe's DAGs, plugins and config code without the ML stack
# (parsing a DAG never imports TensorFlow, TFDV or MLflow; tests/test_docker.py checks that). It runs the api-server, scheduler,
# dag-processor and triggerer; tasks run on the worker image (docker/Dockerfile).
#
#   docker build -f docker/control-plane.Dockerfile -t tfpipe-control-plane:0.1.0 .   (from the repository root)
#
# The provider versions are those of uv.lock (a test compares them).
# Airflow's image for Python 3.12 (the control plane runs no TensorFlow, so it need not match the
# workers' 3.11); the digest is the multi-architecture index.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.12@sha256:9df9c8be4096b9cc626bd7cb1f2b8c712eef66c59c615f8c7e6200871ca10bd1
FROM ${AIRFLOW_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-celery==3.26.0" \
        "celery==5.6.3" \
        "apache-airflow-providers-fab==3.10.2" \
        "apache-airflow-providers-amazon==9.39.0" \
        "psycopg2-binary==2.9.13" \
        "asyncpg==0.32.0" \
        "apache-airflow-providers-cncf-kubernetes==10.25.0"

# tfpipe's code without its dependencies: the control plane imports only tfpipe's config
# (pydantic, PyYAML, both in Airflow's image), never the steps.
COPY --chown=airflow:0 tasks /opt/tfpipe/src/tasks
COPY --chown=airflow:0 dags /opt/tfpipe/src/dags
COPY --chown=airflow:0 plugins /opt/tfpipe/src/plugins
# The training pod's template, which the KubernetesExecutor reads on the scheduler.
COPY --chown=airflow:0 docker/kubernetes/gpu-pod-template.yaml /opt/tfpipe/src/kubernetes/gpu-pod-template.yaml

ENV PYTHONPATH=/opt/tfpipe/src \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/tfpipe/src/dags \
    TFPIPE_PIPELINES_DIR=/opt/tfpipe/src/dags/pipelines \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/tfpipe/src/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
