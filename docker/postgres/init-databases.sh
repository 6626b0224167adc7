#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialized: one role and one database per
# service, each owning its own (the passwords come from docker/.env through the environment).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres \
    -v airflow_password="$POSTGRES_AIRFLOW_PASSWORD" -v mlflow_password="$POSTGRES_MLFLOW_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
