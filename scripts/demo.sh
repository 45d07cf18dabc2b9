#!/usr/bin/env bash
# Set everything up, then run the whole pipeline (uniad_e2e_training) on the built-in mini UniAD under Airflow:
# stage 1 (6 epochs) -> gate -> promote ckpts/full_track_map.pth -> stage 2 (20 epochs) -> gate.
# A few minutes on 2 CPU cores. The mini root is written to runs/demo/ (override with UNIAD_DEMO_ROOT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export AIRFLOW_HOME="$PWD/airflow_home"
ROOT="${UNIAD_DEMO_ROOT:-$PWD/runs/demo}"
LOG="$PWD/runs/demo-airflow.log"
mkdir -p "$(dirname "$LOG")"
if [ -e "$ROOT" ]; then
  if [ -f "$ROOT/.mini_uniad_root" ]; then
    rm -rf "$ROOT"  # an earlier demo's mini root: start clean
  else
    echo "error: $ROOT exists and is not a mini UniAD root; set UNIAD_DEMO_ROOT to a new folder" >&2
    exit 1
  fi
fi
# The demo's root is the one directory this run may use (see UNIAD_ALLOWED_ROOTS in the README).
export UNIAD_ALLOWED_ROOTS="${UNIAD_ALLOWED_ROOTS:-$ROOT}"
# Experiment tracking to a local MLflow store (a SQLite file, no server to start); make mlflow opens its UI.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/runs/mlflow/mlflow.db}"
mkdir -p "$PWD/runs/mlflow"
CONF=$(.venv/bin/python -c 'import json, sys; print(json.dumps({"profile": "mini", "uniad_root": sys.argv[1]}))' "$ROOT")

echo "==> airflow dags test uniad_e2e_training -c '$CONF'  (full log: $LOG)"
set +e
.venv/bin/airflow dags test uniad_e2e_training -c "$CONF" 2>&1 | tee "$LOG" \
  | grep --line-buffered -E '\[stage[12]\] epoch [0-9]+/[0-9]+ iter [0-9]+/[0-9]+|promoted .* to |health: |verdict|Marking run|ERROR|error' \
  | sed -u -E 's/^[0-9TZ:.-]+ \[[a-z]+ *\] //; s/ +\[(airflow|uniad)[^]]*\] loc=.*$//'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ] || ! grep -q "Marking run .* successful" "$LOG"; then
  echo "the pipeline failed (exit $status); see $LOG" >&2
  exit 1
fi

cat <<MSG

==> done. Artifacts (a UniAD-shaped root):
  mini UniAD root          $ROOT
  promoted checkpoint      $ROOT/ckpts/full_track_map.pth  (+ .provenance.json)
  stage 1 work dir         $ROOT/projects/work_dirs/stage1_track_map/full_track_map/
  stage 2 work dir         $ROOT/projects/work_dirs/stage2_e2e/full_e2e/
  health reports           <each work dir>/health/report.md (+ loss, loss_by_task, grad_norm, lr plots)
  Airflow log of the run   $LOG
  experiment tracking      $MLFLOW_TRACKING_URI  (make mlflow: its UI on http://localhost:5000)

MSG
.venv/bin/python -m uniad inspect "$ROOT/ckpts/full_track_map.pth" --stage stage1 --expect-epoch 6
echo
.venv/bin/python -m uniad inspect "$ROOT/projects/work_dirs/stage2_e2e/full_e2e/latest.pth" --stage stage2 --expect-epoch 20

cat <<MSG

==> See the run in Airflow's UI, with its curves and findings:
  make ui     then open http://localhost:8080/uniad/ (or the "UniAD training" entry in Airflow's menu)
              user admin, password in airflow_home/simple_auth_manager_passwords.json.generated
MSG
