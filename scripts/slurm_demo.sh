#!/usr/bin/env bash
# The mini pipeline with both stages as Slurm jobs over two nodes (2 ranks per node, gloo) on the loopback cluster
# of scripts/slurm_cluster.sh: stage 1 -> gate -> promote -> stage 2 -> gate -> publish. As root, after setup.
# The mini root is written to runs/slurm-demo/ (override with UNIAD_DEMO_ROOT).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
eval "$(bash scripts/slurm_cluster.sh start | sed -n 's/^ *export /export /p')"

export AIRFLOW_HOME="$PWD/airflow_home"
ROOT="${UNIAD_DEMO_ROOT:-$PWD/runs/slurm-demo}"
LOG="$PWD/runs/slurm-demo-airflow.log"
mkdir -p "$(dirname "$LOG")"
if [ -e "$ROOT" ]; then
  [ -f "$ROOT/.mini_uniad_root" ] || { echo "error: $ROOT exists and is not a mini UniAD root" >&2; exit 1; }
  rm -rf "$ROOT"
fi
export UNIAD_ALLOWED_ROOTS="${UNIAD_ALLOWED_ROOTS:-$ROOT}"
CONF=$(.venv/bin/python -c 'import json, sys; print(json.dumps({"profile": "mini", "uniad_root": sys.argv[1],
  "executor": "slurm", "nnodes": 2, "nproc_per_node": 2}))' "$ROOT")
echo "==> airflow dags test uniad_e2e_training -c '$CONF'  (full log: $LOG)"
set +e
.venv/bin/airflow dags test uniad_e2e_training -c "$CONF" > "$LOG" 2>&1
status=$?
set -e
grep -E "submitted Slurm job|Slurm job [0-9]+: \{|promoted .* to |health: " "$LOG" | sed -E 's/ +\[[a-z_.]+\] loc=.*$//' || true
if [ "$status" -ne 0 ] || ! grep -q "Marking run .* successful" "$LOG"; then
  echo "the pipeline failed (exit $status); see $LOG" >&2
  exit 1
fi
echo
echo "==> done: both stages ran as Slurm jobs; their audit trails:"
cat "$ROOT"/projects/work_dirs/*/*/slurm_jobs.jsonl
echo "    promoted checkpoint: $ROOT/ckpts/full_track_map.pth; stop the cluster with: make slurm-stop"
