"""The deployment's cluster policy for the pipeline: a Slurm stage takes none of the GPU workers' slots.

A training task is in the ``gpu`` pool with ``UNIAD_GPUS_PER_WORKER`` slots, and that pool counts deferred tasks, so a
local stage keeps its worker's GPUs while its detached job trains. A Slurm stage's GPUs are Slurm's: its task only
submits and follows the job. Which executor a run uses is a run parameter, and a task's pool is fixed when the DAG
is parsed, so the scheduler moves a Slurm run's training tasks to ``default_pool`` (one slot, deferred tasks not
counted) when it creates or clears their task instances (``task_instance_mutation_hook``, given the run's
``dag_run.conf`` since Airflow 3.3).

Airflow applies this hook at task-instance creation only when it comes from ``airflow_local_settings`` (a policy
registered through the ``airflow.policy`` entry point alone is skipped there). So the deployment's
``airflow_local_settings.py`` imports it; ``python -m uniad_airflow.policy`` writes that file into
``$AIRFLOW_HOME/config`` (setup.sh, scripts/celery_stack.sh and the image do) or says what to add to an existing one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from uniad_airflow.names import DAG_ID, TRAIN

GPU_POOL = "gpu"
SLURM_POOL = "default_pool"
IMPORT_LINE = "from uniad_airflow.policy import task_instance_mutation_hook  # noqa: F401\n"


def run_executor(conf: dict | None) -> str:
    """The executor a run's stages use: its ``executor`` parameter, else the parameter's default."""
    from uniad.run.params import PipelineParams

    return str((conf or {}).get("executor") or PipelineParams.executor)


def task_instance_mutation_hook(task_instance: Any, dag_run: Any = None) -> None:
    """A Slurm run's training tasks leave the ``gpu`` pool for ``default_pool``; every other task is left as it is.
    ``dag_run`` is None while a task instance is built and not yet bound to its run: left as it is then, and set when
    the scheduler applies the hook again with the run."""
    if dag_run is None or task_instance.dag_id != DAG_ID or task_instance.task_id not in TRAIN.values():
        return
    if task_instance.pool == GPU_POOL and run_executor(getattr(dag_run, "conf", None)) == "slurm":
        task_instance.pool, task_instance.pool_slots = SLURM_POOL, 1


def install(home: Path) -> str:
    """Make ``home``'s ``config/airflow_local_settings.py`` import the hook: what was done, for the deploy log."""
    settings = home / "config" / "airflow_local_settings.py"
    if not settings.exists():
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(f'"""Cluster policies of this Airflow deployment."""\n\n{IMPORT_LINE}')
        return f"wrote {settings}"
    if "uniad_airflow.policy" in settings.read_text():
        return f"{settings} imports the pipeline's policy already"
    raise SystemExit(
        f"{settings} is this deployment's own and does not import the pipeline's policy, so Slurm stages would hold "
        f"GPU workers' pool slots: add this line to it\n    {IMPORT_LINE}"
    )


if __name__ == "__main__":
    home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
    print(install(home), file=sys.stderr)
