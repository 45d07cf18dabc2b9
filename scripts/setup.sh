#!/usr/bin/env bash
# Set up everything for the embedded default, idempotently:
#   .venv/ (this project installed with its extras: torch CPU, Airflow, mmcv, the test tools), an Airflow home with
#   SQLite in airflow_home/, the gpu pool.
# --test-tools also installs Debian's chromium, chromedriver (the dashboard's browser test), docker-compose and
# haproxy (which validate docker/compose.yaml and its proxy's config offline), slurm-wlm and munge (the two-node Slurm
# cluster of make slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
stamp=.venv/.requirements.sha
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing this project and its dependencies (about a minute on a fresh machine)"
  # torch alone first, with pip: exactly 2.13.0 takes the CPU wheel; anything else would pull several GB of CUDA.
  "${PIP[@]}" torch==2.13.0 uv==0.13.9 "setuptools>=77.0.3,<81" wheel
  # uv installs the rest several times faster than pip (it finds torch installed). mmcv 1.x builds from source
  # and imports pkg_resources: the venv's setuptools<81, without build isolation.
  UV=(.venv/bin/uv pip install -q --python .venv/bin/python --no-build-isolation --compile-bytecode)
  "${UV[@]}" mmcv==1.7.2 || "${PIP[@]}" --no-build-isolation mmcv==1.7.2
  # The package with its extras (pins in pyproject.toml); editable, so the plugin's entry point and the DAG's
  # imports are this checkout.
  "${UV[@]}" -e ".[airflow,mini,dev]" || "${PIP[@]}" --no-build-isolation -e ".[airflow,mini,dev]"
  echo "$want" > "$stamp"
fi

TOOLS=(chromium chromium-driver docker-compose haproxy slurm-wlm munge)
missing=0
for tool in chromium chromedriver docker-compose haproxy slurmctld munged; do command -v "$tool" > /dev/null || missing=1; done
if [ "${1:-}" = "--test-tools" ] && [ "$missing" = 1 ]; then
  echo "==> installing ${TOOLS[*]} (Debian packages)"
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -q "${TOOLS[@]}" > /dev/null \
    || { $SUDO apt-get update -q > /dev/null && $SUDO apt-get install -y -q "${TOOLS[@]}" > /dev/null; }
fi

export AIRFLOW_HOME="$ROOT/airflow_home"
mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/airflow.cfg" ]; then
  echo "==> writing $AIRFLOW_HOME/airflow.cfg"
  cat > "$AIRFLOW_HOME/airflow.cfg" <<CFG
[core]
dags_folder = $ROOT/dags
plugins_folder = $ROOT/plugins
executor = LocalExecutor
load_examples = False
parallelism = 4
dags_are_paused_at_creation = False

[database]
sql_alchemy_conn = sqlite:///$AIRFLOW_HOME/airflow.db

[scheduler]
min_file_process_interval = 30

[api]
port = 8080
CFG
fi
echo "==> airflow db migrate"
.venv/bin/airflow db migrate > "$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -30 "$AIRFLOW_HOME/migrate.log"; exit 1; }
# One training task reserves a whole worker: UNIAD_GPUS_PER_WORKER slots (8 by default) of this pool.
.venv/bin/airflow pools set --include-deferred gpu "${UNIAD_GPUS_PER_WORKER:-8}" "GPU slots of the training workers" > /dev/null
# The cluster policy that takes a Slurm run's training tasks out of that pool (uniad_airflow/policy.py).
.venv/bin/python -m uniad_airflow.policy
echo "==> ready: AIRFLOW_HOME=$AIRFLOW_HOME, pool gpu = ${UNIAD_GPUS_PER_WORKER:-8} slots"
