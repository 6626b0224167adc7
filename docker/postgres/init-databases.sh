#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialized: one database per service
# (POSTGRES_DB, "airflow", is created by the image itself).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE DATABASE mlflow;
SQL
