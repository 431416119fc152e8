#!/usr/bin/env bash
# The production platform on one machine, each service a real process started from the project venv:
# PostgreSQL (Airflow metadata + MLflow backend), Redis (Celery broker), the MLflow server (basic-auth app,
# explicit --allowed-hosts, artifacts proxied), Airflow 3 api-server (FAB auth manager: users and roles),
# scheduler, dag-processor, triggerer and two Celery workers (queue `default`, queue `gpu`), the review
# station (`deepfusion review serve`: gunicorn, its own PostgreSQL database and role), and the artifact store
# (nginx WebDAV behind basic auth: the DVC remote `artifacts` every stage pulls from and pushes to, over HTTP as in
# docker/compose.yaml, so the workers need no shared folder for stage outputs).
#   bash scripts/platform.sh up       # installs postgresql/redis-server if missing; idempotent
#   bash scripts/platform.sh status
#   bash scripts/platform.sh down     # stops only what `up` started (pid files)
#   bash scripts/platform.sh adopt DIR  # hand a workspace or landing folder to the service user
#   source .platform/env              # the client side: MLFLOW_TRACKING_URI + credentials, Airflow URL + users
# Everything lives in $PLATFORM_DIR (default .platform/, git-ignored): data, logs/, pids/, server.env (the
# services' secrets) and env (what a client needs: URLs and its own credentials), every file created under
# umask 077, logs included. Nothing secret is in the repo, on a command line or in a log.
# Started by root, every service runs as the unprivileged system user $PLATFORM_USER (default `deepfusion`,
# created here; PostgreSQL as `postgres`): a worker that parses an uploaded CSV or image holds no root.
# Started by another user, the services run as that user. Workers run the DAGs against DEEPFUSION_HOME
# (default: this project), which the service user must be able to write (`adopt` hands it over).
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
root=$PWD
dir=${PLATFORM_DIR:-$root/.platform}
pg_port=${PLATFORM_PG_PORT:-55432}
redis_port=${PLATFORM_REDIS_PORT:-56379}
mlflow_port=${PLATFORM_MLFLOW_PORT:-5050}
api_port=${PLATFORM_AIRFLOW_PORT:-8088}
review_port=${PLATFORM_REVIEW_PORT:-8010}
artifacts_port=${PLATFORM_ARTIFACTS_PORT:-8081}
venv=${DEEPFUSION_VENV:-$root/.venv}
svc_user=${PLATFORM_USER:-deepfusion}
as_svc=()
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

log() { echo "[platform] $*"; }

install_services() {
  local missing=()
  [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v nginx >/dev/null || missing+=(nginx)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    # Packages only: their own system services (postgresql, redis, nginx on port 80) are not started by the
    # install (policy-rc.d); the platform runs its own instances on loopback ports as the service user.
    local policy=/usr/sbin/policy-rc.d added=0
    if [ ! -e $policy ]; then printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy && added=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >"$dir/logs/apt.log" 2>&1 \
      || { apt-get update -q >>"$dir/logs/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >>"$dir/logs/apt.log" 2>&1; }
    [ $added = 0 ] || rm -f $policy
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
}

SERVER_KEYS='PLATFORM_ARTIFACTS_PASSWORD|PLATFORM_PG_PASSWORD|PLATFORM_REDIS_PASSWORD|AIRFLOW__API_AUTH__JWT_SECRET|AIRFLOW__CORE__FERNET_KEY|AIRFLOW__API__SECRET_KEY|PLATFORM_MLFLOW_SECRET_KEY|PLATFORM_PG_AIRFLOW_PASSWORD|PLATFORM_PG_MLFLOW_PASSWORD|PLATFORM_PG_REVIEW_PASSWORD|PLATFORM_REVIEW_SECRET'

service_user() {
  # Root starts the services but never runs them: setpriv switches to the service user and execs (no extra
  # process, so pid files and process groups stay the service's own).
  mkdir -p "$dir/home" "$dir/dvc-site" "$dir/airflow" "$dir/mlartifacts" "$dir/redis"
  if [ "$(id -u)" != 0 ]; then svc_user=$(id -un); as_svc=(); return; fi
  if ! id -u "$svc_user" >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$svc_user"
    log "created the system user $svc_user"
  fi
  as_svc=(setpriv "--reuid=$svc_user" "--regid=$svc_user" --init-groups --)
  # The service user's own folders (its HOME, DVC's site cache: nothing shared with other users of the host).
  chown -R "$svc_user:$svc_user" "$dir/home" "$dir/dvc-site" "$dir/airflow" "$dir/mlartifacts" "$dir/redis"
}

# What no service may inherit unless it is its own: every generated secret, the client's passwords, Airflow's
# settings (its DB URI holds a password). Dropped by name (`env -u NAME`), so no value ever reaches an argv.
SECRET_VARS='^(PLATFORM_.*|AIRFLOW__.*|AIRFLOW_PASSWORD|AIRFLOW_VIEWER_PASSWORD|MLFLOW_TRACKING_PASSWORD|REVIEW_PASSWORD|DEEPFUSION_REVIEW_.*)$'

drop_env() {  # drop_env KEEP_REGEX: `-u NAME` words for the exported secrets a service must not see
  local n
  for n in $(compgen -e); do
    if [[ $n =~ $SECRET_VARS && ! $n =~ $1 ]]; then printf -- '-u\n%s\n' "$n"; fi
  done
}

service_env() {  # service_env NAME: the `env` arguments for a service: only its own variables
  local keep drop
  case $1 in
    # Task code logs to MLflow; the default queue's categorize task queues its uncertain products for review.
    worker-default) keep='^(AIRFLOW__.*|MLFLOW_TRACKING_PASSWORD|DEEPFUSION_REVIEW_DB)$' ;;
    worker-*) keep='^(AIRFLOW__.*|MLFLOW_TRACKING_PASSWORD)$' ;;
    airflow*) keep='^AIRFLOW__' ;;
    review) keep='^(DEEPFUSION_REVIEW_DB|DEEPFUSION_REVIEW_SECRET)$' ;;
    review-cli) keep='^(DEEPFUSION_REVIEW_DB|DEEPFUSION_REVIEW_PASSWORD)$' ;;
    *) keep='^$' ;;  # redis, mlflow: their own settings come in as MLFLOW_* assignments or a config file
  esac
  mapfile -t drop < <(drop_env "$keep")
  svc_env=("${drop[@]}" HOME="$dir/home" DVC_SITE_CACHE_DIR="$dir/dvc-site")
}

as_service() { local svc_env; service_env airflow-cli; env "${svc_env[@]}" "${as_svc[@]}" "$@"; }

check_home() {  # the workers write runs, outputs and the landing area's state in DEEPFUSION_HOME
  local home=${DEEPFUSION_HOME:-$root}
  if ! as_service test -w "$home" -a -x "$venv/bin/python"; then
    log "the service user $svc_user cannot write $home (or run $venv/bin/python)."
    log "hand the workspace over with: bash scripts/platform.sh adopt $home   (or set DEEPFUSION_HOME)"
    exit 1
  fi
}

secrets() {
  # Generated once (0600 files). server.env: what only the services need; env: what a client needs.
  if [ -f "$dir/env" ] && [ ! -f "$dir/server.env" ] && grep -Eq "^export ($SERVER_KEYS)=" "$dir/env"; then
    # A platform set up before the split: move the services' secrets out of the client file.
    grep -E "^export ($SERVER_KEYS)=" "$dir/env" >"$dir/server.env"
    grep -Ev "^export ($SERVER_KEYS)=" "$dir/env" >"$dir/env.new" && mv "$dir/env.new" "$dir/env"
  fi
  if [ ! -f "$dir/server.env" ]; then
    local fernet
    fernet=$("$venv/bin/python" -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())")
    cat >"$dir/server.env" <<EOF
# Written by scripts/platform.sh (mode 0600): the services' secrets, for no client.
export PLATFORM_PG_PASSWORD=$(openssl rand -hex 16)
export PLATFORM_REDIS_PASSWORD=$(openssl rand -hex 16)
export AIRFLOW__API_AUTH__JWT_SECRET=$(openssl rand -hex 32)
export AIRFLOW__CORE__FERNET_KEY=$fernet
EOF
  fi
  # Flask session keys: the FAB login pages', and MLflow's own (it once reused Airflow's JWT secret, so the
  # tracking server could have forged Airflow tokens). Added to a platform set up before them.
  local key
  for key in AIRFLOW__API__SECRET_KEY PLATFORM_MLFLOW_SECRET_KEY; do
    grep -q "^export $key=" "$dir/server.env" ||
      printf 'export %s=%s\n' "$key" "$(openssl rand -hex 32)" >>"$dir/server.env"
  done
  if [ -f "$dir/env" ] && ! grep -q '^export AIRFLOW_PASSWORD=' "$dir/env"; then  # set up before we chose it
    printf 'export AIRFLOW_USERNAME=admin\nexport AIRFLOW_PASSWORD=%s\n' "$(openssl rand -hex 16)" >>"$dir/env"
  fi
  if [ ! -f "$dir/env" ]; then
    cat >"$dir/env" <<EOF
# Written by scripts/platform.sh (mode 0600). Source it to talk to the platform.
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export MLFLOW_TRACKING_USERNAME=admin
export MLFLOW_TRACKING_PASSWORD=$(openssl rand -hex 16)
export AIRFLOW_URL=http://127.0.0.1:$api_port
export AIRFLOW_USERNAME=admin
export AIRFLOW_PASSWORD=$(openssl rand -hex 16)
EOF
  fi
  if ! grep -q '^export AIRFLOW_VIEWER_PASSWORD=' "$dir/env"; then  # the read-only Airflow user
    printf 'export AIRFLOW_VIEWER_USERNAME=viewer\nexport AIRFLOW_VIEWER_PASSWORD=%s\n' "$(openssl rand -hex 16)" >>"$dir/env"
  fi
  if ! grep -q '^export REVIEW_PASSWORD=' "$dir/env"; then  # the review station's first admin
    printf 'export REVIEW_URL=http://127.0.0.1:%s\nexport REVIEW_USERNAME=admin\nexport REVIEW_PASSWORD=%s\n' \
      "$review_port" "$(openssl rand -hex 16)" >>"$dir/env"
  fi
  grep -q '^export PLATFORM_ARTIFACTS_PASSWORD=' "$dir/server.env" ||  # the workers' login to the artifact store
    printf 'export PLATFORM_ARTIFACTS_PASSWORD=%s\n' "$(openssl rand -hex 16)" >>"$dir/server.env"
  grep -q '^export PLATFORM_REVIEW_SECRET=' "$dir/server.env" ||  # signs the review station's sessions and tokens
    printf 'export PLATFORM_REVIEW_SECRET=%s\n' "$(openssl rand -hex 32)" >>"$dir/server.env"
  # One database role per service (added to a platform set up before the roles existed).
  local role
  for role in AIRFLOW MLFLOW REVIEW; do
    grep -q "^export PLATFORM_PG_${role}_PASSWORD=" "$dir/server.env" ||
      printf 'export PLATFORM_PG_%s_PASSWORD=%s\n' "$role" "$(openssl rand -hex 16)" >>"$dir/server.env"
  done
  # shellcheck disable=SC1091
  source "$dir/server.env"
  # shellcheck disable=SC1091
  source "$dir/env"
}

alive() { [ -f "$dir/pids/$1.pid" ] && kill -0 "$(cat "$dir/pids/$1.pid")" 2>/dev/null; }

start() {  # start NAME CMD...: a background process with its log and pid file, unless it already runs
  local name=$1; shift
  if alive "$name"; then log "$name already running (pid $(cat "$dir/pids/$name.pid"))"; return; fi
  local svc_env; service_env "$name"
  nohup setsid env "${svc_env[@]}" "${as_svc[@]}" "$@" >>"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name.pid"
  log "$name started (pid $!, log $dir/logs/$name.log)"
}

wait_for() {  # wait_for WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$what did not come up in ${secs}s; see $dir/logs/"; return 1
}

postgres_up() {
  local data=$dir/pg
  runuser -u postgres -- test -x "$dir" || {
    log "the postgres user cannot reach $dir (a parent folder is private?); choose another PLATFORM_DIR"; exit 1; }
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data" "$dir/pgrun"
    chown postgres:postgres "$data" "$dir/pgrun"
    chmod 700 "$data"
    local pwfile; pwfile=$(mktemp); chown postgres "$pwfile"; chmod 600 "$pwfile"
    echo "$PLATFORM_PG_PASSWORD" >"$pwfile"
    runuser -u postgres -- "$pgbin/initdb" -D "$data" -U deepfusion --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=peer >"$dir/logs/initdb.log" 2>&1 \
      || { rm -f "$pwfile"; log "initdb failed:"; tail -5 "$dir/logs/initdb.log"; exit 1; }
    rm -f "$pwfile"
  fi
  touch "$dir/logs/postgres.log" && chown postgres "$dir/logs/postgres.log"
  if runuser -u postgres -- "$pgbin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running"
  else
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$data" -l "$dir/logs/postgres.log" -w start \
      -o "-p $pg_port -k $dir/pgrun -c listen_addresses=127.0.0.1" >/dev/null
    log "postgres started on 127.0.0.1:$pg_port"
  fi
  # The superuser `deepfusion` only sets up: each service connects as its own role, which owns its databases
  # and nothing else (no superuser, so no `COPY ... PROGRAM` shell for a compromised service). The SQL comes
  # in on stdin: passwords never reach a command line.
  export PGPASSWORD=$PLATFORM_PG_PASSWORD
  psql -h 127.0.0.1 -p "$pg_port" -U deepfusion -d postgres -v ON_ERROR_STOP=1 -q >/dev/null <<SQL
SELECT 'CREATE ROLE airflow_svc LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'airflow_svc')\\gexec
SELECT 'CREATE ROLE mlflow_svc LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow_svc')\\gexec
SELECT 'CREATE ROLE review_svc LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'review_svc')\\gexec
ALTER ROLE airflow_svc NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$PLATFORM_PG_AIRFLOW_PASSWORD';
ALTER ROLE mlflow_svc NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$PLATFORM_PG_MLFLOW_PASSWORD';
ALTER ROLE review_svc NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$PLATFORM_PG_REVIEW_PASSWORD';
SELECT 'CREATE DATABASE airflow OWNER airflow_svc' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'airflow')\\gexec
SELECT 'CREATE DATABASE mlflow OWNER mlflow_svc' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\\gexec
SELECT 'CREATE DATABASE mlflow_auth OWNER mlflow_svc' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow_auth')\\gexec
SELECT 'CREATE DATABASE review OWNER review_svc' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'review')\\gexec
ALTER DATABASE airflow OWNER TO airflow_svc;
ALTER DATABASE mlflow OWNER TO mlflow_svc;
ALTER DATABASE mlflow_auth OWNER TO mlflow_svc;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE review FROM PUBLIC;
SQL
  # A platform set up before the roles: its tables, sequences, views and enum types belong to the superuser;
  # hand them to their database's role (generated statements, run one by one by \gexec).
  local db owner
  for db in airflow:airflow_svc mlflow:mlflow_svc mlflow_auth:mlflow_svc; do
    owner=${db#*:}; db=${db%%:*}
    psql -h 127.0.0.1 -p "$pg_port" -U deepfusion -d "$db" -v ON_ERROR_STOP=1 -v owner="$owner" -q >/dev/null <<'SQL'
SELECT format('ALTER TABLE public.%I OWNER TO %I', tablename, :'owner') FROM pg_tables WHERE schemaname = 'public' AND tableowner = 'deepfusion' \gexec
SELECT format('ALTER SEQUENCE public.%I OWNER TO %I', sequencename, :'owner') FROM pg_sequences WHERE schemaname = 'public' AND sequenceowner = 'deepfusion' \gexec
SELECT format('ALTER VIEW public.%I OWNER TO %I', viewname, :'owner') FROM pg_views WHERE schemaname = 'public' AND viewowner = 'deepfusion' \gexec
SELECT format('ALTER TYPE public.%I OWNER TO %I', t.typname, :'owner') FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public' AND t.typtype = 'e' AND pg_get_userbyid(t.typowner) = 'deepfusion' \gexec
SQL
  done
  unset PGPASSWORD
}

redis_up() {
  mkdir -p "$dir/redis"
  if alive redis; then log "redis already running"; return; fi
  # The password goes in through a config file (not argv: `ps` would show it).
  (umask 077; printf 'port %s\nbind 127.0.0.1\ndir %s\nrequirepass %s\nsave ""\n' \
    "$redis_port" "$dir/redis" "$PLATFORM_REDIS_PASSWORD" >"$dir/redis/redis.conf")
  [ ${#as_svc[@]} -eq 0 ] || chown "$svc_user" "$dir/redis/redis.conf"
  start redis redis-server "$dir/redis/redis.conf"
  # redis-cli reads the password from REDISCLI_AUTH: `-a` would put it in the process list.
  REDISCLI_AUTH=$PLATFORM_REDIS_PASSWORD wait_for redis 20 redis-cli -p "$redis_port" ping
}

pg_uri() {  # pg_uri ROLE PASSWORD DATABASE
  echo "postgresql+psycopg2://$1:$2@127.0.0.1:$pg_port/$3"
}

mlflow_up() {
  mkdir -p "$dir/mlartifacts"
  (umask 077; printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = %s\nadmin_username = admin\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n' \
    "$(pg_uri mlflow_svc "$PLATFORM_PG_MLFLOW_PASSWORD" mlflow_auth)" >"$dir/mlflow_auth.ini")
  [ ${#as_svc[@]} -eq 0 ] || chown "$svc_user" "$dir/mlflow_auth.ini"
  # Backend URI and admin password by environment: neither appears in the process list.
  MLFLOW_BACKEND_STORE_URI=$(pg_uri mlflow_svc "$PLATFORM_PG_MLFLOW_PASSWORD" mlflow) MLFLOW_AUTH_CONFIG_PATH=$dir/mlflow_auth.ini \
  MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY=$PLATFORM_MLFLOW_SECRET_KEY \
    start mlflow "$venv/bin/mlflow" server --app-name basic-auth --host 127.0.0.1 --port "$mlflow_port" \
      --workers 2 --artifacts-destination "$dir/mlartifacts" \
      --allowed-hosts "127.0.0.1:$mlflow_port,localhost:$mlflow_port"
  wait_for mlflow 120 curl -fsS "http://127.0.0.1:$mlflow_port/health"
}

artifacts_up() {
  # nginx's WebDAV module behind basic auth (the same server as docker/services.Dockerfile's artifact-store), on
  # loopback, data in $dir/artifacts, every path it writes under $dir (it runs as the service user).
  local store=$dir/artifacts tmp=$dir/nginx
  mkdir -p "$store/dvc" "$tmp"
  (umask 077
   printf 'dvc:%s\n' "$(printf '%s' "$PLATFORM_ARTIFACTS_PASSWORD" | openssl passwd -6 -stdin)" >"$tmp/htpasswd"
   cp "$tmp/htpasswd" "$tmp/htpasswd-write"  # one user here, the writer (the station reads runs/latest)
   sed -e "s#/tmp/#$tmp/#g" -e "s#/srv/artifacts#$store#" -e "s#listen 8081;#listen 127.0.0.1:$artifacts_port;#" \
     "$root/docker/services/artifact-store.conf" >"$tmp/nginx.conf")
  [ ${#as_svc[@]} -eq 0 ] || chown -R "$svc_user:$svc_user" "$store" "$tmp"
  start artifacts nginx -e stderr -c "$tmp/nginx.conf" -g 'daemon off;'
  wait_for artifacts 20 curl -fsS "http://127.0.0.1:$artifacts_port/health"
  # The workspace's DVC remote `artifacts` points at it, password included, in .dvc/config.local (mode 0600, the
  # service user's; run workspaces copy it): written with printf, never on a command line. A config.local that
  # this script did not write is left alone (the stages then use the remote it names).
  local home=${DEEPFUSION_HOME:-$root} mark="# written by scripts/platform.sh"
  local conf=$home/.dvc/config.local
  if [ -d "$home/.dvc" ] && { [ ! -e "$conf" ] || head -1 "$conf" | grep -qxF "$mark"; }; then
    (umask 077
     printf "%s\n['remote \"artifacts\"']\n    url = http://127.0.0.1:%s/dvc\n    method = PUT\n    auth = basic\n    user = dvc\n    password = %s\n" \
       "$mark" "$artifacts_port" "$PLATFORM_ARTIFACTS_PASSWORD" >"$conf.tmp")
    [ ${#as_svc[@]} -eq 0 ] || chown "$svc_user:$svc_user" "$conf.tmp"
    mv "$conf.tmp" "$conf"
  elif [ -d "$home/.dvc" ]; then
    log "$conf exists and was not written by this script: the stages use the remote it names, not the store"
  fi
}

review_db() {  # the review station's database, as its own role
  echo "postgresql+psycopg2://review_svc:$PLATFORM_PG_REVIEW_PASSWORD@127.0.0.1:$pg_port/review"
}

review_cli() {  # review_cli ARGS...: `deepfusion review ARGS` as the service user, in the platform home
  local svc_env; service_env review-cli
  (cd "${DEEPFUSION_HOME:-$root}" && env "${svc_env[@]}" "${as_svc[@]}" "$venv/bin/deepfusion" review "$@")
}

review_up() {
  # The station shows the last finished run's catalog (DEEPFUSION_HOME/runs/latest); before the first retrain it
  # waits for one, so its port opens only then. The admin's password goes in by environment, never argv.
  local home=${DEEPFUSION_HOME:-$root}
  DEEPFUSION_REVIEW_PASSWORD=$REVIEW_PASSWORD review_cli user "$REVIEW_USERNAME" --admin >>"$dir/logs/review-cli.log" 2>&1 \
    || { log "the review station's admin could not be saved:"; tail -5 "$dir/logs/review-cli.log"; exit 1; }
  (cd "$home" && DEEPFUSION_REVIEW_SECRET=$PLATFORM_REVIEW_SECRET start review "$venv/bin/deepfusion" review serve \
    --host 127.0.0.1 --port "$review_port" --home "$home")
}

airflow_env() {
  export AIRFLOW_HOME=$dir/airflow
  export AIRFLOW__CORE__DAGS_FOLDER=$root/dags AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$(pg_uri airflow_svc "$PLATFORM_PG_AIRFLOW_PASSWORD" airflow)
  export AIRFLOW__CELERY__BROKER_URL="redis://:$PLATFORM_REDIS_PASSWORD@127.0.0.1:$redis_port/0"
  export AIRFLOW__CELERY__RESULT_BACKEND
  AIRFLOW__CELERY__RESULT_BACKEND="db+$(pg_uri airflow_svc "$PLATFORM_PG_AIRFLOW_PASSWORD" airflow)"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$api_port/execution/
  export AIRFLOW__API__BASE_URL=http://127.0.0.1:$api_port AIRFLOW__API__PORT=$api_port AIRFLOW__API__HOST=127.0.0.1
  # Users and roles (Admin, Viewer, ...) in the metadata DB; the simple auth manager is for `airflow.sh` only.
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  local cores; cores=$(nproc)
  export AIRFLOW__CORE__PARALLELISM=$((cores * 2)) AIRFLOW__CELERY__WORKER_CONCURRENCY=1
  export AIRFLOW__OPERATORS__DEFAULT_QUEUE=default
  # A task may wait this long for a free worker; Airflow 3.3 also makes it the lifetime of the task's Execution API
  # token (at the default 600 s, a task queued behind a backlog dies at start with "Invalid auth token").
  export AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT=${AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT:-7200}
  export PYTHONPATH="$root/dags${PYTHONPATH:+:$PYTHONPATH}"
  export DEEPFUSION_HOME=${DEEPFUSION_HOME:-$root} DEEPFUSION_BIN=$venv/bin PATH="$venv/bin:$PATH"
  export DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=False DO_NOT_TRACK=1
}

airflow_user() {  # airflow_user NAME ROLE PASSWORD: create, or set the password of, a FAB user
  # The password goes in on stdin (getpass falls back to it without a terminal), never on a command line.
  local out
  out=$(printf '%s\n%s\n' "$3" "$3" | as_service "$venv/bin/airflow" users create --username "$1" --role "$2" \
    --firstname "$1" --lastname deepfusion --email "$1@deepfusion.invalid" 2>&1) || { echo "$out" | tail -5; return 1; }
  if echo "$out" | grep -q "already exist"; then
    printf '%s\n%s\n' "$3" "$3" | as_service "$venv/bin/airflow" users reset-password --username "$1" >/dev/null 2>&1
  fi
}

airflow_up() {
  airflow_env
  rm -f "$dir/airflow_passwords.json"  # the simple auth manager's file of an older platform
  as_service "$venv/bin/airflow" db migrate >"$dir/logs/airflow-migrate.log" 2>&1
  as_service "$venv/bin/airflow" pools set gpu_pool 1 "GPU training slots" >/dev/null
  airflow_user admin Admin "$AIRFLOW_PASSWORD"
  airflow_user "$AIRFLOW_VIEWER_USERNAME" Viewer "$AIRFLOW_VIEWER_PASSWORD"
  start airflow-api-server "$venv/bin/airflow" api-server --port "$api_port"
  start airflow-scheduler "$venv/bin/airflow" scheduler
  start airflow-dag-processor "$venv/bin/airflow" dag-processor
  start airflow-triggerer "$venv/bin/airflow" triggerer
  start worker-default "$venv/bin/airflow" celery worker --queues default --concurrency 1 \
    --celery-hostname "default@%h" --skip-serve-logs
  # On a machine with a GPU this worker sees it; params.gpu.yaml is applied by the stages it runs.
  start worker-gpu "$venv/bin/airflow" celery worker --queues gpu --concurrency 1 \
    --celery-hostname "gpu@%h" --skip-serve-logs
  wait_for airflow-api-server 180 curl -fsS "http://127.0.0.1:$api_port/api/v2/version"
}

stop() {
  local name=$1
  if alive "$name"; then
    local pid; pid=$(cat "$dir/pids/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null
    log "$name stopped"
  fi
  rm -f "$dir/pids/$name.pid"
}

AIRFLOW_PROCS=(worker-gpu worker-default airflow-triggerer airflow-dag-processor airflow-scheduler airflow-api-server)

case "${1:-}" in
  up)
    t0=$(date +%s)
    mkdir -p "$dir/logs" "$dir/pids"
    # The postgres user must reach its data and its log file; nobody may list or read the rest.
    chmod 711 "$dir" "$dir/logs"
    install_services
    service_user
    check_home
    secrets
    postgres_up
    # The categorize worker queues uncertain products in the review station's database (kept by that worker only).
    export DEEPFUSION_REVIEW_DB; DEEPFUSION_REVIEW_DB=$(review_db)
    redis_up
    artifacts_up
    mlflow_up
    airflow_up
    review_up
    log "up in $(( $(date +%s) - t0 )) s: MLflow http://127.0.0.1:$mlflow_port, Airflow http://127.0.0.1:$api_port," \
        "review station http://127.0.0.1:$review_port (after the first retrain), artifact store" \
        "http://127.0.0.1:$artifacts_port/dvc (source $dir/env)"
    ;;
  down)
    for p in review "${AIRFLOW_PROCS[@]}" mlflow artifacts redis; do stop "$p"; done
    if [ -f "$dir/pg/PG_VERSION" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then
      runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null && log "postgres stopped"
    fi
    ;;
  adopt)  # adopt DIR: the service user owns a workspace (DEEPFUSION_HOME) or a landing area from now on
    [ -n "${2:-}" ] && [ -d "$2" ] || { echo "usage: bash scripts/platform.sh adopt DIR" >&2; exit 2; }
    service_user
    chown -R "$svc_user:$svc_user" "$2"
    log "$2 now belongs to $svc_user"
    ;;
  status)
    [ -f "$dir/server.env" ] || { echo "not set up ($dir/server.env missing)"; exit 1; }
    rc=0
    for p in redis artifacts mlflow "${AIRFLOW_PROCS[@]}" review; do
      if alive "$p"; then echo "$p: running (pid $(cat "$dir/pids/$p.pid"))"; else echo "$p: DOWN"; rc=1; fi
    done
    if runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then echo "postgres: running"
    else echo "postgres: DOWN"; rc=1; fi
    curl -fsS "http://127.0.0.1:$mlflow_port/health" >/dev/null && echo "mlflow /health: ok" || rc=1
    curl -fsS "http://127.0.0.1:$api_port/api/v2/version" >/dev/null && echo "airflow api: ok" || rc=1
    curl -fsS "http://127.0.0.1:$artifacts_port/health" >/dev/null && echo "artifact store: ok" || rc=1
    curl -fsS "http://127.0.0.1:$review_port/login" >/dev/null && echo "review station: ok" ||
      echo "review station: waiting for the first run (see $dir/logs/review.log)"
    exit $rc
    ;;
  *)
    echo "usage: bash scripts/platform.sh up|down|status" >&2; exit 2 ;;
esac
