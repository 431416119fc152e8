"""Orchestration: what the Airflow tasks call (landing area, run workspaces, run params)."""
