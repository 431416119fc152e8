"""Where the project and its tools live; read when a task runs, so tests can point at a workspace."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pendulum

START = pendulum.datetime(2026, 1, 1, tz="UTC")
# How long a task may run, by kind: a hung `dvc pull` or training must not hold the one-repro-per-workspace
# run forever. Tasks name their kind; the default covers the rest.
TIMEOUT = {"quick": pendulum.duration(minutes=10), "io": pendulum.duration(hours=1),
           "registry": pendulum.duration(minutes=30), "batch": pendulum.duration(hours=1),
           "stage": pendulum.duration(hours=2), "training": pendulum.duration(hours=8)}
# Retries help against a lost worker or a network blip; tasks whose failure is deterministic set retries=0.
DEFAULT_ARGS = {"retries": 2, "retry_delay": pendulum.duration(minutes=1), "retry_exponential_backoff": True,
                "execution_timeout": TIMEOUT["stage"]}
GPU_QUEUE, GPU_POOL = "gpu", "gpu_pool"
# Bash-side equivalents of home() and bin_dir(), evaluated by the worker's shell.
SH_HOME = '"${DEEPFUSION_HOME:-' + str(Path(__file__).resolve().parents[2]) + '}"'
SH_BIN = '"${DEEPFUSION_BIN:-' + str(Path(sys.executable).parent) + '}"'


def home() -> Path:
    """The project clone this worker runs in (DEEPFUSION_HOME, default: the repo holding dags/)."""
    return Path(os.environ.get("DEEPFUSION_HOME", Path(__file__).resolve().parents[2]))


def landing() -> Path:
    """Landing area for new catalog batches: DEEPFUSION_LANDING, else <home>/landing. An environment variable
    (not an Airflow Variable) because the landing watcher needs it when the DAG file is parsed."""
    return Path(os.environ.get("DEEPFUSION_LANDING") or home() / "landing")


def gpu_executor_config() -> dict:
    """KubernetesExecutor pod_override asking for one NVIDIA GPU (container must be named `base`).

    Needs the `kubernetes` client (apache-airflow-providers-cncf-kubernetes); without it the task runs
    on whatever executor is configured, routed by queue="gpu" under CeleryExecutor.
    """
    try:
        from kubernetes.client import models as k8s
    except ImportError:
        return {}
    return {"pod_override": k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="base", resources=k8s.V1ResourceRequirements(
                limits={"nvidia.com/gpu": "1"}, requests={"nvidia.com/gpu": "1"}))],
            node_selector={"accelerator": "nvidia"},
            tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        ))}
