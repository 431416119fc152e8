#!/usr/bin/env bash
# The artifact store's writer (ARTIFACTS_USER, default dvc) with ARTIFACTS_PASSWORD, and its read-only user
# `reader` with ARTIFACTS_READ_PASSWORD when one is set (the review station), hashed into files only the server
# reads; then nginx in the foreground.
set -euo pipefail
: "${ARTIFACTS_PASSWORD:?set ARTIFACTS_PASSWORD}"
umask 077
printf '%s:%s\n' "${ARTIFACTS_USER:-dvc}" "$(printf '%s' "$ARTIFACTS_PASSWORD" | openssl passwd -6 -stdin)" \
  > /tmp/htpasswd-write
cp /tmp/htpasswd-write /tmp/htpasswd
if [ -n "${ARTIFACTS_READ_PASSWORD:-}" ]; then
  printf 'reader:%s\n' "$(printf '%s' "$ARTIFACTS_READ_PASSWORD" | openssl passwd -6 -stdin)" >> /tmp/htpasswd
fi
mkdir -p /srv/artifacts/dvc
exec nginx -c /etc/nginx/artifact-store.conf -g 'daemon off;'
