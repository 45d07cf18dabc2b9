"""The orchestration baseline: a chain with the pipeline's shape (the same number of tasks, the training steps
on the gpu queue and pool) whose tasks do nothing. benchmarks/bench_orchestration.py runs it beside the real DAG."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, chain, task

GPUS_PER_WORKER = int(os.environ.get("UNIAD_GPUS_PER_WORKER", "8"))
STEPS = [
    "preflight",
    "fetch_pretrained",
    "stage1_train",
    "validate_stage1",
    "promote_checkpoint",
    "stage2_train",
    "validate_stage2",
    "upload_stage2",
]


@task
def noop() -> None:
    """Does nothing: what is left of the run's time is Airflow's."""


with DAG(
    dag_id="bench_empty_chain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["benchmark"],
):
    steps = {}
    for step in STEPS:
        gpu = {"pool": "gpu", "pool_slots": GPUS_PER_WORKER, "queue": "gpu"} if step.endswith("_train") else {}
        steps[step] = noop.override(task_id=step, retries=0, **gpu)()
    chain(*steps.values())
    steps["promote_checkpoint"] >> noop.override(task_id="upload_stage1", retries=0)()
    steps["validate_stage2"] >> noop.override(task_id="publish_model", retries=0)()
