#!/usr/bin/env bash
# Regenerate requirements/lock.txt from requirements/project.in in a fresh venv (Airflow's constraints URL
# is unreachable offline, so the resolved set is committed instead). Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade "pip>=25"
"$tmp/venv/bin/pip" install -q -r requirements/project.in
"$tmp/venv/bin/pip" check
"$tmp/venv/bin/pip" freeze --exclude-editable > requirements/lock.txt
rm -rf "$tmp"
echo "requirements/lock.txt updated"
