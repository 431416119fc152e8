# DeepFusion image: the project environment (Airflow + ML stack, requirements/lock.txt) on CPU.
# Used by every Airflow component, the CPU worker and the MLflow server. Build from the repo root:
#   DOCKER_BUILDKIT=1 docker build -f docker/pipeline.Dockerfile -t deepfusion:latest .
# or `bash scripts/images.sh build`, which also handles a machine without Docker Hub (BASE_IMAGE=local/debian:bookworm
# made with debootstrap) and a TLS proxy (its CA passed as the BuildKit secret `ca`, never stored in a layer).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 DEEPFUSION_HOME=/opt/deepfusion AIRFLOW_HOME=/opt/airflow DEBIAN_FRONTEND=noninteractive \
    PYTHONPATH=/opt/deepfusion/dags

# The official Python image brings python3.11; a plain Debian 12 base (the local stand-in) gets Debian's own 3.11.
# Either way the project lives in one venv at /opt/venv. PYTHONPATH: the triggerer imports the landing watcher's
# trigger (dags/common/triggers.py) by its class path.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* curl=7.88.* ca-certificates=20230311* \
 && if ! command -v python3.11 >/dev/null; then \
      apt-get install -y --no-install-recommends python3.11=3.11.2-* python3.11-venv=3.11.2-*; fi \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && groupadd --gid 50000 deepfusion \
 && useradd --uid 50000 --gid deepfusion --create-home deepfusion \
 && mkdir -p /opt/deepfusion /opt/airflow \
 && chown deepfusion:deepfusion /opt/deepfusion /opt/airflow
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/deepfusion
COPY requirements/lock.txt requirements/lock.txt
# Behind a TLS-intercepting proxy pip needs the proxy's CA: mounted for this step only (secret `ca`, optional).
RUN --mount=type=secret,id=ca,required=false \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
 && pip install --upgrade "pip>=25" \
 && pip install -r requirements/lock.txt
COPY --chown=deepfusion:deepfusion . .
# Build deps (setuptools) come from the lock: no second trip to the index, which would need the CA again.
RUN pip install --no-deps --no-build-isolation -e . && pip check \
 && mkdir -p /mlartifacts /opt/deepfusion/runs /opt/deepfusion/.dvc/cache /opt/deepfusion/artifacts \
             /opt/deepfusion/landing \
 && chown deepfusion:deepfusion /mlartifacts /opt/deepfusion/runs /opt/deepfusion/.dvc/cache \
             /opt/deepfusion/artifacts /opt/deepfusion/landing
# ^ the mount points of compose's named volumes: a new volume takes the ownership of the folder it is mounted
# on, so the services (uid 50000) can write their run workspaces, DVC cache, outputs and MLflow artifacts.

USER 50000
ENTRYPOINT ["/opt/deepfusion/docker/entrypoint.sh"]
CMD ["airflow", "version"]
