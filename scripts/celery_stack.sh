#!/usr/bin/env bash
# The production shape on one machine: CeleryExecutor on PostgreSQL + Redis, with api-server, scheduler,
# dag-processor, triggerer, a Celery worker for the default queue and UNIAD_GPU_WORKERS that consume only the gpu
# queue.
# Runs in the foreground; Ctrl-C or SIGTERM to its process group stops every part. A part that dies is started
# again, as compose's restart policy does; logs/<part>.pid holds the pid of its current process.
#
#   bash scripts/celery_stack.sh            # after `bash scripts/setup.sh`
#
# Settings (environment):
#   UNIAD_DB_URL          metadata DB     (default postgresql+psycopg2://postgres@127.0.0.1:5432/uniad_airflow;
#                                          the database is created when missing)
#   UNIAD_BROKER_URL      Celery broker   (default redis://127.0.0.1:6379/0)
#   UNIAD_API_PORT        api-server port (default 8080)
#   UNIAD_GPU_WORKERS     GPU workers to start, each consuming the gpu queue (default 1)
#   UNIAD_GPUS_PER_WORKER GPUs per worker (default: nvidia-smi's count, else 8); gpu pool = workers x GPUs
#   AIRFLOW_HOME          default ./airflow_home_celery
#   AIRFLOW__API_AUTH__JWT_SECRET  shared by every part (generated into $AIRFLOW_HOME/jwt_secret when unset)
#   UNIAD_ADMIN_PASSWORD  the first Admin's password, from your secret store (required; user UNIAD_ADMIN_USER, default
#                         admin). Users and roles live in the metadata DB (FAB auth manager): add people with
#                         `airflow users create --role Viewer|User|Op|Admin ...`
#   UNIAD_ALLOWED_ROOTS   directories runs may use (see the README); unset: UNIAD_ROOT and the mini runs folder
#   UNIAD_MLFLOW          on (default) or off: an MLflow tracking server beside the stack, its runs in a database
#                         <metadata DB>_mlflow on the same PostgreSQL; every part's MLFLOW_TRACKING_URI points at it
#   UNIAD_MLFLOW_PORT     its port (default 5000)
#   UNIAD_MLFLOW_ARTIFACTS where its artifacts go (default $AIRFLOW_HOME/mlflow_artifacts; s3://bucket/prefix for S3,
#                         with MLFLOW_S3_ENDPOINT_URL for an S3-compatible store and AWS_* credentials in the environment)
#   UNIAD_VISIBILITY_TIMEOUT_S  Redis redelivers an unacknowledged task after this long: above the longest stage
#                         (default 604800, 7 days; Celery's own 24 h would run a 2-day stage twice)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$ROOT/.venv/bin
[ -x "$BIN/airflow" ] || { echo "run 'bash scripts/setup.sh' first (no $BIN/airflow)" >&2; exit 1; }
[ -n "${UNIAD_ADMIN_PASSWORD:-}" ] || {
  echo "set UNIAD_ADMIN_PASSWORD (the first Admin's password, from your secret store), e.g." >&2
  echo "  UNIAD_ADMIN_PASSWORD=\$(cat /run/secrets/airflow_admin_password) bash scripts/celery_stack.sh" >&2
  exit 1
}

DB_URL=${UNIAD_DB_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/uniad_airflow}
BROKER_URL=${UNIAD_BROKER_URL:-redis://127.0.0.1:6379/0}
PORT=${UNIAD_API_PORT:-8080}
if [ -z "${UNIAD_GPUS_PER_WORKER:-}" ]; then
  UNIAD_GPUS_PER_WORKER=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
  [ "$UNIAD_GPUS_PER_WORKER" -gt 0 ] || UNIAD_GPUS_PER_WORKER=8
fi
GPU_WORKERS=${UNIAD_GPU_WORKERS:-1}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/airflow_home_celery}
mkdir -p "$AIRFLOW_HOME/logs"

# The databases, when the server lets us create them (trust auth on loopback here; managed databases exist already).
DB_NAME=${DB_URL##*/}
DB_NAME=${DB_NAME%%\?*}
MLFLOW=${UNIAD_MLFLOW:-on}
MLFLOW_DB_URL=${DB_URL%/*}/${DB_NAME}_mlflow
DATABASES=("$DB_NAME")
[ "$MLFLOW" = off ] || DATABASES+=("${DB_NAME}_mlflow")
"$BIN/python" - "$DB_URL" "${DATABASES[@]}" <<'PY'
import sys
from sqlalchemy import create_engine, text
url, names = sys.argv[1], sys.argv[2:]
admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
with admin.connect() as conn:
    for name in names:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            print(f"==> created database {name}")
PY
if [ "$MLFLOW" != off ]; then
  MLFLOW_PORT=${UNIAD_MLFLOW_PORT:-5000}
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:$MLFLOW_PORT}
fi

if [ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]; then
  [ -s "$AIRFLOW_HOME/jwt_secret" ] || "$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$AIRFLOW_HOME/jwt_secret"
  AIRFLOW__API_AUTH__JWT_SECRET=$(cat "$AIRFLOW_HOME/jwt_secret")
fi
export AIRFLOW__API_AUTH__JWT_SECRET
export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
# Users, roles and permissions in the metadata DB; SimpleAuthManager (plaintext passwords, no roles) is for the
# embedded default only.
export AIRFLOW__CORE__AUTH_MANAGER=airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$DB_URL
export AIRFLOW__CELERY__BROKER_URL=$BROKER_URL
export AIRFLOW__CELERY__RESULT_BACKEND=db+$DB_URL
export AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT=${UNIAD_VISIBILITY_TIMEOUT_S:-604800}
# A task's supervisor may notice its process's exit only at its next wake-up (every min_heartbeat_interval, 5 s by
# default): a task that ends skipped or failed held the next task back that long. 1 s; one heartbeat a second.
export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=${AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL:-1}
# The api-server may be away for 10 minutes (a failing deploy, a restart under load) without a running stage being
# killed: Airflow's defaults end a task after 3 failed heartbeats, 16-44 s into an outage. A failed heartbeat takes
# 20-23 s when the server refuses (5 tries, waits of 5 s and more), up to 48 s when it hangs (5 s per try); 32 in a
# row: 11-12 min refused, at most 26 min hung. The scheduler fails a task after 30 min without a heartbeat, above
# that, so a retry never starts while the old attempt still runs; the price: a lost worker is noticed after 30 min.
# A task's token must outlive the outage: it is renewed when a fifth of it is left (24 min of 2 h).
export AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS=${AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS:-32}
export AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN=${AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN:-5}
export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=${AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT:-1800}
export AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME=${AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME:-7200}
export AIRFLOW__CORE__DAGS_FOLDER=${UNIAD_DAGS_FOLDER:-$ROOT/dags}
export AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$PORT/execution/
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__OPERATORS__DEFAULT_QUEUE=default
export UNIAD_GPUS_PER_WORKER
export PATH=$BIN:$PATH

echo "==> airflow db migrate ($DB_URL)"
airflow db migrate > "$AIRFLOW_HOME/logs/migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/logs/migrate.log"; exit 1; }
PYTHONPATH=$ROOT/plugins "$BIN/python" -m uniad_airflow.admin 2>> "$AIRFLOW_HOME/logs/migrate.log" \
  || { tail -5 "$AIRFLOW_HOME/logs/migrate.log"; exit 1; }
PYTHONPATH=$ROOT/plugins "$BIN/python" -m uniad_airflow.policy  # a Slurm run's training tasks hold no gpu slot
SLOTS=$((GPU_WORKERS * UNIAD_GPUS_PER_WORKER))
airflow pools set --include-deferred gpu "$SLOTS" "$GPU_WORKERS worker(s) x $UNIAD_GPUS_PER_WORKER GPUs" > /dev/null
echo "==> gpu pool: $SLOTS slots ($GPU_WORKERS worker(s) x $UNIAD_GPUS_PER_WORKER GPUs; one training task takes a worker)"

trap 'trap - TERM INT; echo "==> stopping"; kill -TERM 0; wait' TERM INT
start() {  # name, argv...: in the background, started again 5 s after it dies (compose: restart: unless-stopped)
  local name=$1
  shift
  (
    while true; do
      "$@" >> "$AIRFLOW_HOME/logs/$name.log" 2>&1 &
      echo $! > "$AIRFLOW_HOME/logs/$name.pid"
      status=0
      wait $! || status=$?
      echo "==> $name exited with status $status; starting it again in 5 s" >> "$AIRFLOW_HOME/logs/$name.log"
      sleep 5
    done
  ) &
  echo "==> $name: $* (log $AIRFLOW_HOME/logs/$name.log, pid in $name.pid)"
}
if [ "$MLFLOW" != off ]; then
  # Clients upload artifacts through the server, which alone needs the artifact store's credentials.
  start mlflow "$BIN/mlflow" server --backend-store-uri "$MLFLOW_DB_URL" \
    --artifacts-destination "${UNIAD_MLFLOW_ARTIFACTS:-$AIRFLOW_HOME/mlflow_artifacts}" \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
fi
start api-server airflow api-server --port "$PORT"
start scheduler airflow scheduler
start dag-processor airflow dag-processor
start triggerer airflow triggerer
# The gate's libraries (torch, matplotlib) are imported once, before the worker forks its tasks.
AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=uniad_airflow.celery_config.DEFAULT_WORKER \
  start worker-default airflow celery worker --queues default --concurrency 4 --celery-hostname "default@%h"
# One training task at a time per GPU worker: it uses all of the worker's GPUs. A GPU worker acknowledges a task
# when it starts it and fetches no task ahead (uniad_airflow/celery_config.py says why).
for i in $(seq 1 "$GPU_WORKERS"); do
  name=worker-gpu; host="gpu@%h"; logs=()
  # Workers on one host share the log server port: the first serves the (shared) log folder.
  [ "$i" -eq 1 ] || { name=worker-gpu-$i; host="gpu$i@%h"; logs=(--skip-serve-logs); }
  AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=uniad_airflow.celery_config.GPU_WORKER \
    start "$name" airflow celery worker --queues gpu --concurrency 1 --celery-hostname "$host" "${logs[@]}"
done
echo "==> UI and API on http://127.0.0.1:$PORT (user ${UNIAD_ADMIN_USER:-admin}, the password of UNIAD_ADMIN_PASSWORD)"
wait
