"""
### Roll the published UniAD model back to a registered version

Rewrites the file at `publish_path` (the hand-off to deployment) from a version of the registry's `uniad_e2e` model
(atomically, with its provenance; the checkpoint's sha256 checked against the version's) and moves the `champion`
alias to it, so the next run's champion/challenger compares with it. Every version stays registered: list them with
`python -m uniad models` or in MLflow's UI.

    airflow dags trigger uniad_model_rollback -c '{"model_version": "3", "publish_path": "/workspace/UniAD/ckpts/uniad_e2e.pth"}'
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.sdk import DAG, Param

from uniad_airflow import settings
from uniad_airflow.operators import RollbackModelOperator

with DAG(
    dag_id="uniad_model_rollback",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["uniad", "registry"],
    params={
        "model_version": Param(
            "", type="string", pattern="^[0-9]+$", title="Model version", description="of uniad_e2e"
        ),
        "publish_path": Param(
            "", type="string", minLength=1, title="Publish path", description="the published model file"
        ),
    },
) as dag:
    RollbackModelOperator(task_id="rollback", retries=0, outlets=[settings.PUBLISHED_ASSET])
