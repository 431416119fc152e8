#!/usr/bin/env bash
# Container entrypoint: point the DVC remote `artifacts` at the network store when one is given, wait for the
# metadata DB when Airflow is configured with one, then exec the command.
# Also runnable as a plain command outside Docker (tests/dags/test_docker.py does).
set -euo pipefail
# Workers share no disk: stage outputs travel through DEEPFUSION_ARTIFACTS_URL (compose: the artifact-store
# service, DVC's http remote over WebDAV; s3://... in a real deployment, credentials by the AWS variables).
# Written with the shell's printf into the project's .dvc/config.local (never argv, where `ps` shows a password);
# run workspaces copy it (components/orchestration/run_workspace.py).
if [ -n "${DEEPFUSION_ARTIFACTS_URL:-}" ]; then
  home=${DEEPFUSION_HOME:-/opt/deepfusion}
  (
    umask 077
    {
      printf "['remote \"artifacts\"']\n    url = %s\n" "$DEEPFUSION_ARTIFACTS_URL"
      case "$DEEPFUSION_ARTIFACTS_URL" in
        http://*|https://*)
          printf "    method = PUT\n    auth = basic\n    user = %s\n    password = %s\n" \
            "${DEEPFUSION_ARTIFACTS_USER:-dvc}" "${DEEPFUSION_ARTIFACTS_PASSWORD:?set DEEPFUSION_ARTIFACTS_PASSWORD}" ;;
      esac
    } > "$home/.dvc/config.local.tmp"
    mv "$home/.dvc/config.local.tmp" "$home/.dvc/config.local"
  )
  unset DEEPFUSION_ARTIFACTS_PASSWORD  # the tasks read it from the DVC config, not from their environment
fi
if [ -n "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ] && [ "${1:-}" = "airflow" ] && [ "${SKIP_DB_WAIT:-0}" != "1" ]; then
  for _ in $(seq 1 60); do
    airflow db check >/dev/null 2>&1 && break
    echo "entrypoint: waiting for the metadata database..." >&2
    sleep 2
  done
fi
exec "$@"
