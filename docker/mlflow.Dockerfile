# The MLflow tracking server: MLflow's own image, with the PostgreSQL driver and boto3 that its
# backend store and S3 artifact proxy need (the image ships neither). Versions as in uv.lock: the
# base is the newest MLflow image whose digest was verified here (v3.16.1, the multi-architecture
# index), and MLflow itself is brought to the locked 3.17.2, the version of the clients.
#
#   docker build -f docker/mlflow.Dockerfile -t tfpipe-mlflow:3.17.2 docker/
ARG MLFLOW_IMAGE=ghcr.io/mlflow/mlflow:v3.16.1@sha256:06058cc872276873e9759c635e773342aca4731e240f6d20d88ea43774083984
FROM ${MLFLOW_IMAGE}

RUN pip install --no-cache-dir "mlflow==3.17.2" "psycopg2-binary==2.9.13" "boto3==1.43.117"
USER 1000
