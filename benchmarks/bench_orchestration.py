"""Benchmark: what Airflow adds around the training, and the worker slots a Slurm stage holds (the DAG file's parse
cost: benchmarks/bench_parse.py).

    .venv/bin/python benchmarks/bench_orchestration.py     # or: make bench (needs PostgreSQL, Redis, slurm-wlm, root)

1. On the Celery stack (scripts/celery_stack.sh: PostgreSQL, Redis, a default and a gpu worker) with the two-node
   Slurm cluster on loopback (scripts/slurm_cluster.sh), in one session, after one warm-up run: one run of
   benchmarks/dags/bench_empty_chain.py (the pipeline's 10 tasks doing nothing, the training steps on the gpu
   queue), one run of uniad_e2e_training on the mini profile (1 + 1 epochs) with executor=local and one with
   executor=slurm (2 nodes, 1 rank each). Overhead = the run's wall time minus the training's: the training
   processes' wall time (local; stage1_train and stage2_train report it in XCom) or the jobs' run time from
   StartTime to EndTime (Slurm; slurm_jobs.jsonl). Each ratio is that overhead over the empty chain's wall time.
   Target for the local path: <= 1.2.
2. Worker slots held while a Slurm stage trains: sampled twice a second from the gpu pool while a training task is
   deferred (running_slots: task instances of the pool that hold a worker). Target: 0.
3. Experiment tracking: the empty chain and the local run again on a stack without its MLflow server
   (UNIAD_MLFLOW=off): the local run's ratio with tracking and without, side by side.
"""

from __future__ import annotations

import json
import shutil
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


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def orchestration(tracking: bool = True) -> dict:
    """The runs on a stack with its MLflow tracking server (``tracking``: every run tracked), or without one: the
    empty chain and the local run only."""
    from support import slurm_cluster

    home = Path(tempfile.mkdtemp(prefix="uniad-bench-celery-"))
    dags = home / "dags"
    dags.mkdir()
    shutil.copy(DAG_FILE, dags)
    shutil.copy(REPO / "benchmarks/dags/bench_empty_chain.py", dags)
    try:
        with (
            slurm_cluster(home / "slurm", 25817) as cluster,
            celery_stack(
                home,
                redis_db=8,
                dags_folder=dags,
                extra_env={
                    "SLURM_CONF": cluster["SLURM_CONF"],
                    "UNIAD_ALLOWED_ROOTS": str(home),
                    "UNIAD_MLFLOW": "on" if tracking else "off",
                },
            ) as stack,
        ):
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
                status, answer = http(
                    "POST", f"{base}/{dag_id}/dagRuns", token=token, body={"logical_date": None, "conf": conf}
                )
                assert status == 200, answer
                run_id = answer["dag_run_id"]
                held, deferred_samples = 0, 0
                while True:
                    status, dag_run = http("GET", f"{base}/{dag_id}/dagRuns/{run_id}", token=token)
                    if dag_run["state"] in ("success", "failed"):
                        break
                    status, tis = http("GET", f"{base}/{dag_id}/dagRuns/{run_id}/taskInstances", token=token)
                    if any(t["state"] == "deferred" for t in tis["task_instances"] if t["task_id"].endswith("_train")):
                        pool = http("GET", f"http://127.0.0.1:{port}/api/v2/pools/gpu", token=token)[1]
                        held, deferred_samples = max(held, pool["running_slots"]), deferred_samples + 1
                    time.sleep(0.5)
                if dag_run["state"] != "success":
                    raise RuntimeError(f"{dag_id} run {run_id} failed; see {home}/logs")
                status, tis = http("GET", f"{base}/{dag_id}/dagRuns/{run_id}/taskInstances", token=token)
                tasks = {t["task_id"]: t["duration"] or 0.0 for t in tis["task_instances"]}
                return {
                    "run_id": run_id,
                    "wall_s": _seconds(dag_run["start_date"], dag_run["end_date"]),
                    "tasks": tasks,
                    "held_slots": held,
                    "deferred_samples": deferred_samples,
                }

            def xcom(run_id: str, task_id: str) -> dict:
                status, answer = http(
                    "GET",
                    f"{base}/uniad_e2e_training/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                    "return_value?deserialize=true",
                    token=token,
                )
                assert status == 200, answer
                return answer["value"] if isinstance(answer["value"], dict) else json.loads(answer["value"])

            run("bench_empty_chain", {})  # warm-up: the workers' first tasks pay their start-up
            empty = run("bench_empty_chain", {})
            conf = {"profile": "mini", "stage1_epochs": 1, "stage2_epochs": 1}
            local = run("uniad_e2e_training", {**conf, "uniad_root": str(home / "mini-local")})
            local["training_s"] = sum(xcom(local["run_id"], t)["duration_s"] for t in ("stage1_train", "stage2_train"))
            if not tracking:
                return {"empty": empty, "local": local}
            slurm = run(
                "uniad_e2e_training",
                {**conf, "uniad_root": str(home / "mini-slurm"), "executor": "slurm", "nnodes": 2, "nproc_per_node": 1},
            )
            slurm["training_s"] = 0.0
            for task_id in ("stage1_train", "stage2_train"):
                work_dir = Path(xcom(slurm["run_id"], task_id)["work_dir"])
                for job in (json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()):
                    slurm["training_s"] += _seconds(job["start"], job["end"])
            return {"empty": empty, "local": local, "slurm": slurm}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def ratio(result: dict, name: str) -> tuple[float, float]:
    """(overhead s, overhead over the empty chain's wall time) of run ``name``."""
    overhead = result[name]["wall_s"] - result[name]["training_s"]
    return overhead, overhead / result["empty"]["wall_s"]


def main() -> int:
    result = orchestration()
    untracked = orchestration(tracking=False)
    empty = result["empty"]
    print(f"empty chain of the same 10 tasks: {empty['wall_s']:.1f} s")
    for name, what in (("local", "training processes"), ("slurm", "Slurm jobs' run time")):
        measured = result[name]
        overhead, times = ratio(result, name)
        target = f" (target <= 1.2x: {'met' if times <= 1.2 else 'MISSED'})" if name == "local" else ""
        print(
            f"executor={name}: {measured['wall_s']:.1f} s wall, of which {what} {measured['training_s']:.1f} s -> "
            f"orchestration overhead {overhead:.1f} s, ratio {times:.2f}x{target}"
        )
    slurm = result["slurm"]
    print(
        f"worker slots held while a Slurm stage was deferred: {slurm['held_slots']} (max of "
        f"{slurm['deferred_samples']} samples; target 0: {'met' if slurm['held_slots'] == 0 else 'MISSED'})"
    )
    tracked_ratio, untracked_ratio = ratio(result, "local")[1], ratio(untracked, "local")[1]
    print(
        f"experiment tracking: the local run's ratio {tracked_ratio:.2f}x with the stack's MLflow server, "
        f"{untracked_ratio:.2f}x on a stack without one (empty chain {untracked['empty']['wall_s']:.1f} s there)"
    )
    print("where the time goes (task durations in s: local / slurm / empty chain):")
    for task_id, seconds in result["local"]["tasks"].items():
        print(
            f"  {task_id:20s} {seconds:6.1f} / {slurm['tasks'].get(task_id, 0.0):6.1f} / "
            f"{empty['tasks'].get(task_id, 0.0):4.1f}"
        )
    gaps = [result[kind]["wall_s"] - sum(result[kind]["tasks"].values()) for kind in ("local", "slurm", "empty")]
    print(
        f"  {'between tasks':20s} {gaps[0]:6.1f} / {gaps[1]:6.1f} / {gaps[2]:4.1f}   (wall minus the sum of task "
        "durations)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
