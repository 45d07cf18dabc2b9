"""Benchmark: what Airflow adds around the training, and what the DAG file costs to parse.

    .venv/bin/python benchmarks/bench_orchestration.py     # or: make bench-orchestration (needs PostgreSQL + Redis)

1. On the Celery stack (scripts/celery_stack.sh: PostgreSQL, Redis, a default and a gpu worker), one run of
   uniad_e2e_training on the mini profile (1 + 1 epochs) and one run of benchmarks/dags/bench_empty_chain.py (the
   same 10 tasks doing nothing, training steps on the gpu queue), in one session, after one warm-up run. Overhead = the run's wall time
   minus the training processes' wall time (stage1_train and stage2_train report it in XCom); the ratio is that
   overhead over the empty chain's wall time. Target: <= 1.2.
2. Parse cost: running the DAG file in a fresh interpreter, after `import airflow.sdk`, median of 7. Target:
   <= 50 ms.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from services import celery_stack, http  # noqa: E402

DAG_FILE = REPO / "dags/uniad_e2e_training.py"


def parse_cost(repeats: int = 7) -> tuple[float, float]:
    probe = (
        "import sys, time, runpy; import airflow.sdk; "
        f"sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        f"t = time.perf_counter(); runpy.run_path({str(DAG_FILE)!r}); print(time.perf_counter() - t)"
    )
    base_probe = "import time; t = time.perf_counter(); import airflow.sdk; print(time.perf_counter() - t)"
    parse, sdk = [], []
    for _ in range(repeats):
        parse.append(
            float(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)
        )
        sdk.append(
            float(subprocess.run([sys.executable, "-c", base_probe], capture_output=True, text=True, check=True).stdout)
        )
    return statistics.median(parse), statistics.median(sdk)


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def orchestration() -> dict:
    home = Path(tempfile.mkdtemp(prefix="uniad-bench-celery-"))
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags)
    shutil.copy(REPO / "benchmarks/dags/bench_empty_chain.py", dags)
    try:
        with celery_stack(home, redis_db=8, dags_folder=dags) as stack:
            port = stack.port
            base = f"http://127.0.0.1:{port}/api/v2/dags"
            token = stack.token()
            deadline = time.monotonic() + 180
            while not {"uniad_e2e_training", "bench_empty_chain"} <= {
                d["dag_id"] for d in http("GET", base, token=token)[1].get("dags", [])
            }:
                if time.monotonic() > deadline:
                    raise RuntimeError("the dag-processor did not register both DAGs")
                time.sleep(2)

            def run(dag_id: str, conf: dict) -> dict:
                status, answer = http("POST", f"{base}/{dag_id}/dagRuns", token=token,
                                      body={"logical_date": None, "conf": conf})  # fmt: skip
                assert status == 200, answer
                run_id = answer["dag_run_id"]
                while True:
                    status, dag_run = http("GET", f"{base}/{dag_id}/dagRuns/{run_id}", token=token)
                    if dag_run["state"] in ("success", "failed"):
                        break
                    time.sleep(1)
                if dag_run["state"] != "success":
                    raise RuntimeError(f"{dag_id} run {run_id} failed; see {home}/logs")
                status, tis = http("GET", f"{base}/{dag_id}/dagRuns/{run_id}/taskInstances", token=token)
                tasks = {t["task_id"]: t["duration"] or 0.0 for t in tis["task_instances"]}
                return {"run_id": run_id, "wall_s": _seconds(dag_run["start_date"], dag_run["end_date"]),
                        "tasks": tasks}  # fmt: skip

            run("bench_empty_chain", {})  # warm-up: the workers' first tasks pay their start-up
            empty = run("bench_empty_chain", {})
            real = run("uniad_e2e_training", {"profile": "mini", "uniad_root": str(home / "mini"),
                                              "stage1_epochs": 1, "stage2_epochs": 1})  # fmt: skip
            training = 0.0
            for task_id in ("stage1_train", "stage2_train"):
                status, answer = http(
                    "GET", f"{base}/uniad_e2e_training/dagRuns/{real['run_id']}/taskInstances/{task_id}/xcomEntries/"
                    "return_value?deserialize=true", token=token)  # fmt: skip
                assert status == 200, answer
                value = answer["value"] if isinstance(answer["value"], dict) else json.loads(answer["value"])
                training += value["duration_s"]
            return {"empty_s": empty["wall_s"], "real_s": real["wall_s"], "training_s": training,
                    "empty_tasks": empty["tasks"], "real_tasks": real["tasks"]}  # fmt: skip
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parse_s, sdk_s = parse_cost()
    print(
        f"DAG file parse after `import airflow.sdk`: {parse_s * 1000:.1f} ms (median of 7; import airflow.sdk "
        f"itself: {sdk_s * 1000:.0f} ms); target <= 50 ms: {'met' if parse_s <= 0.05 else 'MISSED'}"
    )
    result = orchestration()
    overhead = result["real_s"] - result["training_s"]
    ratio = overhead / result["empty_s"]
    print(
        f"uniad_e2e_training run: {result['real_s']:.1f} s wall, of which training processes "
        f"{result['training_s']:.1f} s -> orchestration overhead {overhead:.1f} s"
    )
    print(f"empty chain of the same 10 tasks: {result['empty_s']:.1f} s")
    print(f"overhead ratio: {ratio:.2f}x (target <= 1.2x: {'met' if ratio <= 1.2 else 'MISSED'})")
    print("where the time goes (task durations in s, real run / empty chain):")
    for task_id, seconds in result["real_tasks"].items():
        print(f"  {task_id:20s} {seconds:6.1f} / {result['empty_tasks'].get(task_id, 0.0):4.1f}")
    gaps = [result[f"{kind}_s"] - sum(result[f"{kind}_tasks"].values()) for kind in ("real", "empty")]
    print(f"  {'between tasks':20s} {gaps[0]:6.1f} / {gaps[1]:4.1f}   (wall time minus the sum of task durations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
