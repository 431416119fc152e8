#!/usr/bin/env bash
# The artifact store's one user (ARTIFACTS_USER, default dvc) with ARTIFACTS_PASSWORD, hashed into a file only the
# server reads; then nginx in the foreground.
set -euo pipefail
: "${ARTIFACTS_PASSWORD:?set ARTIFACTS_PASSWORD}"
umask 077
printf '%s:%s\n' "${ARTIFACTS_USER:-dvc}" "$(printf '%s' "$ARTIFACTS_PASSWORD" | openssl passwd -6 -stdin)" > /tmp/htpasswd
mkdir -p /srv/artifacts/dvc
exec nginx -c /etc/nginx/artifact-store.conf -g 'daemon off;'
