#!/usr/bin/env bash
# Build the DeepFusion image and check it runs: `airflow version` and a prediction, as the non-root user.
#   bash scripts/images.sh build                # deepfusion:latest from docker/pipeline.Dockerfile
#   bash scripts/images.sh smoke MODEL CATALOG  # airflow version + predict CATALOG with MODEL (a pipeline's
#                                               # artifacts/stack), inside the image
#   bash scripts/images.sh services             # deepfusion/postgres:15, deepfusion/redis:7, deepfusion/artifact-store
#                                               # from docker/services.Dockerfile (Debian's packages): the stand-ins
#                                               # compose uses where postgres:16 / redis:7.4 cannot be pulled
# One image serves every role: the Airflow services, both Celery workers and the MLflow server. The GPU worker needs
# no CUDA base image: the locked torch wheels carry the CUDA runtime, the NVIDIA container toolkit brings the driver.
# Environment: IMAGE (default deepfusion:latest); BASE_IMAGE (default python:3.11-slim-bookworm; when Docker Hub is
# out of reach, a local Debian 12 stand-in local/debian:bookworm is made with debootstrap); DOCKER (client).
# Starts dockerd (installing docker.io when missing, as root) if no engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-deepfusion:latest}
OFFICIAL_BASE=python:3.11-slim-bookworm
LOCAL_BASE=local/debian:bookworm
CA=/etc/ssl/certs/ca-certificates.crt
export DOCKER_BUILDKIT=1

# A client that can build with BuildKit: a newer CLI without its buildx plugin cannot, the engine's own CLI can.
DOCKER=${DOCKER:-docker}
if ! command -v "$DOCKER" >/dev/null || { ! "$DOCKER" buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; }; then
  DOCKER=/usr/bin/docker
fi

engine() {
  "$DOCKER" info >/dev/null 2>&1 && return 0
  if ! command -v dockerd >/dev/null; then
    echo "[images] installing docker.io"
    apt-get install -y -q docker.io >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q docker.io >/dev/null; }
    [ -x /usr/bin/docker ] && ! "$DOCKER" buildx version >/dev/null 2>&1 && DOCKER=/usr/bin/docker
  fi
  echo "[images] starting dockerd (log: /tmp/deepfusion-dockerd.log)"
  nohup dockerd >/tmp/deepfusion-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "[images] dockerd did not come up; see /tmp/deepfusion-dockerd.log" >&2
  return 1
}

mirror() {
  # The apt mirror this machine uses (deb822 or one-line format), else Debian's own.
  local m
  m=$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$m" ] || m=$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
  echo "${m:-http://deb.debian.org/debian}"
}

base_image() {
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
  if "$DOCKER" image inspect "$OFFICIAL_BASE" >/dev/null 2>&1 \
     || timeout 60 "$DOCKER" pull -q "$OFFICIAL_BASE" >/dev/null 2>&1; then
    echo "$OFFICIAL_BASE"; return
  fi
  if ! "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    echo "[images] $OFFICIAL_BASE cannot be pulled: making $LOCAL_BASE with debootstrap" >&2
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null \
      || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
    local root
    root=$(mktemp -d /tmp/deepfusion-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$root" "$(mirror)" >/tmp/deepfusion-debootstrap.log 2>&1
    tar -C "$root" -c . | "$DOCKER" import - "$LOCAL_BASE" >/dev/null
    rm -rf "$root"
  fi
  echo "$LOCAL_BASE"
}

build() {
  engine
  local base secret=()
  base=$(base_image)
  # Behind a TLS proxy pip needs its CA: a BuildKit secret, mounted for the install step only.
  [ -s "$CA" ] && secret=(--secret "id=ca,src=$CA")
  # The validation pages' browser assets travel in the build context (components/assets/, not committed):
  # fetched here from the npm registry when missing (stdlib only; digests checked), so the image serves them.
  python3 -m components.web_assets fetch
  echo "[images] building $IMAGE on $base"
  local t0=$SECONDS old new
  old=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  "$DOCKER" build -f docker/pipeline.Dockerfile --build-arg "BASE_IMAGE=$base" "${secret[@]}" -t "$IMAGE" .
  new=$("$DOCKER" image inspect -f '{{.Id}}' "$IMAGE")
  echo "[images] built $IMAGE in $((SECONDS - t0)) s ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | \
    awk '{printf "%.1f GB", $1/1e9}'))"
  # The image the tag pointed to before is now untagged, and the layers the new one does not share stay on disk
  # (the project copy; the whole Python environment, ~8 GB, when the lock changed): remove it when nothing else
  # names it. `image rm` refuses (and we keep it) while a container still uses it.
  if [ -n "$old" ] && [ "$old" != "$new" ] && [ "$("$DOCKER" image inspect -f '{{len .RepoTags}}' "$old")" = 0 ]; then
    "$DOCKER" image rm "$old" >/dev/null 2>&1 && echo "[images] removed the previous $IMAGE ($old)" \
      || echo "[images] kept the previous $IMAGE ($old): a container still uses it"
  fi
}

services() {
  engine
  # Debian 12 slim when it can be pulled, else the pipeline image's base (the official Python image, or the
  # local debootstrap stand-in): all three are Debian 12 with apt, which is all the services need.
  local base=${BASE_IMAGE:-debian:bookworm-slim}
  if ! "$DOCKER" image inspect "$base" >/dev/null 2>&1 && ! timeout 60 "$DOCKER" pull -q "$base" >/dev/null 2>&1; then
    base=$(base_image)
  fi
  local target tag
  for target in postgres redis artifact-store; do
    case $target in postgres) tag=deepfusion/postgres:15 ;; redis) tag=deepfusion/redis:7 ;;
                    artifact-store) tag=deepfusion/artifact-store:1 ;; esac
    echo "[images] building $tag on $base"
    "$DOCKER" build -q -f docker/services.Dockerfile --target "$target" --build-arg "BASE_IMAGE=$base" -t "$tag" . \
      >/dev/null
  done
  echo "[images] built deepfusion/postgres:15, deepfusion/redis:7, deepfusion/artifact-store:1"
}

smoke() {
  local model=$1 catalog=$2 out
  engine
  out=$(mktemp -d /tmp/deepfusion-smoke.XXXXXX)
  chmod 777 "$out"  # the container's user (uid 50000) writes the predictions here
  "$DOCKER" run --rm "$IMAGE" bash -c 'set -e; [ "$(id -u)" != 0 ]; echo "user $(id -un)"; airflow version'
  # A stacked model names its experts by the paths its pipeline wrote them to, absolute or relative to the project:
  # the model's artifacts folder is mounted at the same path, and the project's artifacts/ at the image's.
  local arts=(-v "$(dirname "$model"):$(dirname "$model"):ro")
  [ -d artifacts ] && arts+=(-v "$PWD/artifacts:/opt/deepfusion/artifacts:ro")
  "$DOCKER" run --rm -v "$catalog:$catalog:ro" "${arts[@]}" -v "$out:/out" "$IMAGE" \
    python -m components.predict "$catalog" --model "$model" --output /out/predictions.csv
  echo "[images] predictions: $(($(wc -l <"$out/predictions.csv") - 1)) rows in $out/predictions.csv"
}

case "${1:-}" in
  build) build ;;
  services) services ;;
  smoke) [ $# -eq 3 ] || { echo "usage: $0 smoke MODEL CATALOG" >&2; exit 2; }; smoke "$(realpath "$2")" "$(realpath "$3")" ;;
  *) echo "usage: $0 build | services | smoke MODEL CATALOG" >&2; exit 2 ;;
esac
