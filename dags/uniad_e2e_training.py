"""
### UniAD staged end-to-end training

`preflight` → `fetch_pretrained` → `stage1_train` (track + map) → `validate_stage1` → `promote_checkpoint` →
`stage2_train` (end to end, `load_from` the promoted file) → `validate_stage2` → `publish_model` (champion/challenger
at `publish_path`); `upload_stage1` and `upload_stage2` copy each stage's results to `s3_uri` when one is given.
The promoted checkpoint is the Asset `uniad_stage1_checkpoint` (its events carry path, epoch and sha256), the
published model the Asset `uniad_e2e_model` (path, sha256, metrics, run id).

Trigger from the UI form, or:

    airflow dags trigger uniad_e2e_training -c '{"profile": "uniad", "uniad_root": "/workspace/UniAD"}'
    airflow dags test uniad_e2e_training -c '{"profile": "mini", "uniad_root": "/tmp/uniad-mini"}'

`profile=mini` trains the built-in mini UniAD (CPU, gloo) in `uniad_root`, or in a per-run folder when that is
empty. A run may only use the directories of `UNIAD_ALLOWED_ROOTS` (unset: the mini runs folder and `UNIAD_ROOT`). Training tasks run on the `gpu` queue and take `UNIAD_GPUS_PER_WORKER` slots of the `gpu` pool, so two
runs never share a worker's GPUs. A failed task waits `UNIAD_RETRY_DELAY_S` (default 120) before its retry. `UNIAD_SCHEDULE` (a cron expression, or `asset:<uri>`) retrains on a schedule;
the connection `uniad_notify` (apprise or SMTP) tells people when a run succeeds or fails, and alerts them while
a stage goes wrong; runs are tracked on MLflow (`MLFLOW_TRACKING_URI`) and models registered there.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG, Param, chain

from uniad.run.params import form_fields
from uniad_airflow import names, settings
from uniad_airflow.notify import RunOutcomeNotifier
from uniad_airflow.operators import (
    FetchPretrainedOperator,
    PromoteCheckpointOperator,
    PublishModelOperator,
    UniADPreflightOperator,
    UniADTrainOperator,
    UploadArtifactsOperator,
    ValidateStageOperator,
    cancel_jobs_of_run,
    end_tracked_run,
)

# Deployment settings come from the environment at parse time (no metadata-DB or connection access here).
GPUS_PER_WORKER = settings.gpus_per_worker()

with DAG(
    dag_id=names.DAG_ID,
    doc_md=__doc__,
    schedule=settings.schedule(),
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    on_success_callback=[end_tracked_run("FINISHED"), RunOutcomeNotifier(outcome="succeeded")],
    on_failure_callback=[cancel_jobs_of_run, end_tracked_run("FAILED"), RunOutcomeNotifier(outcome="failed")],
    tags=["uniad", "training", "gpu"],
    default_args={"retries": 0, "retry_delay": timedelta(seconds=settings.retry_delay_s())},
    # The trigger form is derived from the typed parameters (uniad.run.params), which check the same schema.
    params={name: Param(default, **schema) for name, (default, schema) in form_fields(settings.default_root()).items()},
) as dag:
    preflight = UniADPreflightOperator(task_id=names.PREFLIGHT, retries=0)
    plan = preflight.output  # every later task works from the plan preflight validated
    fetch = FetchPretrainedOperator(task_id=names.FETCH_PRETRAINED, plan=plan, retries=2)
    # Training, and publish_model (which may evaluate the champion with tools/test.py), run where the GPUs are.
    gpu = {"pool": "gpu", "pool_slots": GPUS_PER_WORKER, "queue": "gpu"}
    train, validate, upload = {}, {}, {}
    for stage in ("stage1", "stage2"):
        train[stage] = UniADTrainOperator(task_id=names.TRAIN[stage], stage=stage, plan=plan, retries=1, **gpu)
        validate[stage] = ValidateStageOperator(task_id=names.VALIDATE[stage], stage=stage, plan=plan, retries=0)
        upload[stage] = UploadArtifactsOperator(task_id=names.UPLOAD[stage], stage=stage, plan=plan, retries=2)
    promote = PromoteCheckpointOperator(task_id=names.PROMOTE, plan=plan, retries=1, outlets=[settings.PROMOTED_ASSET])
    publish = PublishModelOperator(
        task_id=names.PUBLISH,
        plan=plan,
        gate=validate["stage2"].output,
        retries=1,
        outlets=[settings.PUBLISHED_ASSET],
        **gpu,
    )

    chain(
        preflight,
        fetch,
        train["stage1"],
        validate["stage1"],
        promote,
        train["stage2"],
        validate["stage2"],
        upload["stage2"],
    )
    validate["stage2"] >> publish  # champion/challenger beside the upload
    promote >> upload["stage1"]  # beside stage 2, which does not wait for the upload
