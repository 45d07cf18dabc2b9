"""Celery settings of the workers. The GPU workers' tasks may run for days (``[celery] celery_config_options``).

Airflow's defaults acknowledge a task message when the task ends (``task_acks_late``). Redis hands a message that
is not acknowledged within ``visibility_timeout`` to another worker, and that duplicate carries a workload token
which expired long ago (its lifetime is ``[scheduler] task_queued_timeout``): its failure is reported for the task
that is still training, the scheduler fails it and its ranks are killed. A GPU worker therefore acknowledges a
message when it starts the task, and fetches a message only when its process is free (``worker_disable_prefetch``:
otherwise the next training task would wait, unacknowledged, behind a multi-day one, to be redelivered later).

A GPU worker lost mid-task is still recovered: Airflow sees the task's heartbeats stop
(``[scheduler] task_instance_heartbeat_timeout``) and fails the attempt, and the retry resumes from the newest
checkpoint (executor=local) or re-attaches to its Slurm job (executor=slurm).

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=uniad_airflow.celery_config.GPU_WORKER airflow celery worker --queues gpu

The default-queue workers run the gate, the promotion and the publication: short tasks that each imported torch
and matplotlib (~2 s of a ~3 s task). ``DEFAULT_WORKER`` imports them once in the worker (``uniad.health.preload``),
and each task, forked from it, starts with them loaded.

    AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=uniad_airflow.celery_config.DEFAULT_WORKER airflow celery worker
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Built on first use: Airflow's plugin manager imports every module of the plugins folder, and Celery's defaults
    # read the broker settings when imported.
    changes = {
        "GPU_WORKER": {"task_acks_late": False, "worker_disable_prefetch": True},
        "DEFAULT_WORKER": {"imports": ("uniad.health.preload",)},
    }
    if name not in changes:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    return {**DEFAULT_CELERY_CONFIG, **changes[name]}
