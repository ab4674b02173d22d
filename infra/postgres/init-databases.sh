#!/bin/bash
# One Postgres, two databases: MLflow's tracking/registry store and Prefect's API database.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE USER mlflow WITH PASSWORD '${MLFLOW_DB_PASSWORD}';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER prefect WITH PASSWORD '${PREFECT_DB_PASSWORD}';
CREATE DATABASE prefect OWNER prefect;
SQL
