#!/usr/bin/env bash
# One role per service, each owning its own database and nothing else (no superuser: a compromised service
# gets no `COPY ... TO PROGRAM` shell). Run once by the postgres image on an empty data volume. The passwords
# are read from the environment by psql itself (\getenv), so they never appear on a command line.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv airflow_pw AIRFLOW_DB_PASSWORD
\getenv mlflow_pw MLFLOW_DB_PASSWORD
\getenv review_pw REVIEW_DB_PASSWORD
CREATE ROLE airflow_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'airflow_pw';
CREATE ROLE mlflow_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'mlflow_pw';
CREATE ROLE review_svc LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'review_pw';
CREATE DATABASE airflow OWNER airflow_svc;
CREATE DATABASE mlflow OWNER mlflow_svc;
CREATE DATABASE mlflow_auth OWNER mlflow_svc;
CREATE DATABASE review OWNER review_svc;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE review FROM PUBLIC;
SQL
