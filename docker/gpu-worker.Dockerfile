# GPU worker: the same lock on a CUDA runtime; serves the Celery queue "gpu" (training stages).
#   docker build -f docker/gpu-worker.Dockerfile -t deepfusion-gpu:latest .
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 DEEPFUSION_HOME=/opt/deepfusion AIRFLOW_HOME=/opt/airflow \
    DEBIAN_FRONTEND=noninteractive

# Ubuntu 24.04 ships Python 3.12; the project pins 3.11, taken from the deadsnakes PPA.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common=0.99.* git=1:2.43.* \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /opt/venv \
 && groupadd --gid 50000 deepfusion \
 && useradd --uid 50000 --gid deepfusion --create-home deepfusion \
 && mkdir -p /opt/deepfusion /opt/airflow \
 && chown deepfusion:deepfusion /opt/deepfusion /opt/airflow
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/deepfusion
COPY requirements/lock.txt requirements/lock.txt
RUN pip install -r requirements/lock.txt
COPY --chown=deepfusion:deepfusion . .
RUN pip install --no-deps -e .

USER 50000
ENTRYPOINT ["/opt/deepfusion/docker/entrypoint.sh"]
CMD ["airflow", "celery", "worker", "--queues", "gpu", "--concurrency", "1"]
