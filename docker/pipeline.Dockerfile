# DeepFusion image: the project environment (Airflow + ML stack, requirements/lock.txt) on CPU.
# Used by every Airflow component, the CPU worker and the MLflow server. Build from the repo root:
#   docker build -f docker/pipeline.Dockerfile -t deepfusion:latest .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 DEEPFUSION_HOME=/opt/deepfusion AIRFLOW_HOME=/opt/airflow

RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* curl=7.88.* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 50000 deepfusion \
 && useradd --uid 50000 --gid deepfusion --create-home deepfusion \
 && mkdir -p /opt/deepfusion /opt/airflow \
 && chown deepfusion:deepfusion /opt/deepfusion /opt/airflow

WORKDIR /opt/deepfusion
COPY requirements/lock.txt requirements/lock.txt
RUN pip install -r requirements/lock.txt
COPY --chown=deepfusion:deepfusion . .
RUN pip install --no-deps -e .

USER 50000
ENTRYPOINT ["/opt/deepfusion/docker/entrypoint.sh"]
CMD ["airflow", "version"]
