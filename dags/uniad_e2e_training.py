"""
### UniAD staged end-to-end training

`preflight` → `fetch_pretrained` → `stage1_train` (track + map) → `validate_stage1` → `promote_checkpoint` →
`stage2_train` (end to end, `load_from` the promoted file) → `validate_stage2`; `upload_stage1` and `upload_stage2`
copy each stage's results to `s3_uri` when one is given. The promoted checkpoint is the Asset
`uniad_stage1_checkpoint` (its events carry path, epoch and sha256).

Trigger from the UI form, or:

    airflow dags trigger uniad_e2e_training -c '{"profile": "uniad", "uniad_root": "/workspace/UniAD"}'
    airflow dags test uniad_e2e_training -c '{"profile": "mini", "uniad_root": "/tmp/uniad-mini"}'

`profile=mini` trains the built-in mini UniAD (CPU, gloo) in `uniad_root`, or in a per-run folder when that is
empty. Training tasks run on the `gpu` queue and take `UNIAD_GPUS_PER_WORKER` slots of the `gpu` pool, so two
runs never share a worker's GPUs. `UNIAD_SCHEDULE` (a cron expression, or `asset:<uri>`) retrains on a schedule;
the connection `uniad_notify` (SMTP) sends an email when a run succeeds or fails.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, chain

from uniad_airflow import settings
from uniad_airflow.notify import RunOutcomeNotifier
from uniad_airflow.operators import (
    DAG_ID,
    FetchPretrainedOperator,
    PromoteCheckpointOperator,
    UniADPreflightOperator,
    UniADTrainOperator,
    UploadArtifactsOperator,
    ValidateStageOperator,
)

# Deployment settings come from the environment at parse time (no metadata-DB or connection access here).
GPUS_PER_WORKER = settings.gpus_per_worker()
DEFAULT_ROOT = settings.default_root()
CFG_OPTION = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.+$"}

with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=settings.schedule(),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    on_success_callback=RunOutcomeNotifier(outcome="succeeded"),
    on_failure_callback=RunOutcomeNotifier(outcome="failed"),
    tags=["uniad", "training", "gpu"],
    default_args={"retries": 0, "retry_delay": timedelta(minutes=2)},
    params={
        "profile": Param(
            "uniad" if DEFAULT_ROOT else "mini",
            type="string",
            enum=["uniad", "mini"],
            title="Profile",
            description="uniad: a real UniAD checkout on the GPU workers. mini: the built-in mini UniAD (CPU-friendly).",
        ),
        "uniad_root": Param(
            DEFAULT_ROOT,
            type=["null", "string"],
            title="UniAD root",
            description="Absolute path of the UniAD checkout on the workers. For mini: where to write the mini root "
            "(empty: a new folder per run).",
        ),
        "stage1_config": Param(
            "projects/configs/stage1_track_map/full_track_map.py",
            type="string",
            title="Stage 1 config",
            description="Track + map config, relative to the UniAD root.",
        ),
        "stage2_config": Param(
            "projects/configs/stage2_e2e/full_e2e.py",
            type="string",
            title="Stage 2 config",
            description="End-to-end config, relative to the UniAD root.",
        ),
        "stage1_epochs": Param(6, type="integer", minimum=1, title="Stage 1 epochs"),
        "stage2_epochs": Param(20, type="integer", minimum=1, title="Stage 2 epochs"),
        "nproc_per_node": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=64,
            title="Processes per node",
            description="One per GPU. Empty: the profile's default (8 for uniad, 2 for mini).",
        ),
        "backend": Param(
            "auto",
            type="string",
            enum=["auto", "nccl", "gloo"],
            title="Distributed backend",
            description="auto: nccl when every rank has a usable GPU, else gloo.",
        ),
        "launcher": Param(
            "torchrun",
            type="string",
            enum=["torchrun", "launch"],
            title="Launcher",
            description="torchrun (torch >= 1.10) or python -m torch.distributed.launch --use_env (UniAD main, torch 1.9).",
        ),
        "deterministic": Param(True, type="boolean", title="Deterministic", description="Pass --deterministic."),
        "seed": Param(0, type=["null", "integer"], minimum=0, title="Seed"),
        "stage1_cfg_options": Param(
            [],
            type="array",
            items=CFG_OPTION,
            title="Stage 1 cfg options",
            description="mmcv --cfg-options as key=value items, e.g. data.workers_per_gpu=4, log_config.interval=10.",
        ),
        "stage2_cfg_options": Param(
            [],
            type="array",
            items=CFG_OPTION,
            title="Stage 2 cfg options",
            description="mmcv --cfg-options as key=value items, e.g. data.workers_per_gpu=4.",
        ),
        "strict": Param(
            False,
            type="boolean",
            title="Strict health gate",
            description="Fail validate_stage1/2 on health warnings (plateau, spikes, lr mismatch), not only on errors.",
        ),
        "stall_timeout_s": Param(
            600,
            type="integer",
            minimum=30,
            title="Stall timeout (s)",
            description="Stop a training stage when neither its log nor its output moved for this long "
            "(and 5x the usual log interval).",
        ),
        "checkpoint_interval_iters": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            title="Checkpoint every N iterations",
            description="Also checkpoint inside an epoch, so a crash loses at most N iterations and the retry resumes "
            "mid-epoch. Empty: once per epoch (a UniAD stage-1 epoch is ~8 h on 8 GPUs; 500 iterations ~70 min).",
        ),
        "ckpt_path": Param(
            "ckpts/full_track_map.pth",
            type="string",
            title="Promoted checkpoint",
            description="Where the verified stage-1 checkpoint is published; stage 2 loads it (relative to the root).",
        ),
        "s3_uri": Param(
            None,
            type=["null", "string"],
            pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
            title="S3 artifacts",
            description="Upload checkpoints, logs and reports to <s3_uri>/<run id>/, e.g. s3://my-bucket/uniad-runs.",
        ),
        "aws_conn_id": Param(
            "aws_default",
            type="string",
            pattern=r"^[A-Za-z0-9_.-]{1,250}$",
            title="AWS connection",
            description="The Airflow connection with the S3 credentials (and endpoint_url for S3-compatible stores).",
        ),
        "pretrained_s3_uris": Param(
            [],
            type="array",
            items={"type": "string", "pattern": r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"},
            title="Pretrained weights from S3",
            description="Objects fetched into <root>/ckpts/ before stage 1, e.g. "
            "s3://my-bucket/pretrained/bevformer_r101_dcn_24ep.pth.",
        ),
    },
) as dag:
    preflight = UniADPreflightOperator(task_id="preflight", retries=0)
    fetch = FetchPretrainedOperator(task_id="fetch_pretrained", retries=2)
    gpu = {"pool": "gpu", "pool_slots": GPUS_PER_WORKER, "queue": "gpu"}
    stage1_train = UniADTrainOperator(task_id="stage1_train", stage="stage1", retries=1, **gpu)
    validate_stage1 = ValidateStageOperator(task_id="validate_stage1", stage="stage1", retries=0)
    promote = PromoteCheckpointOperator(task_id="promote_checkpoint", retries=1, outlets=[settings.PROMOTED_ASSET])
    upload_stage1 = UploadArtifactsOperator(task_id="upload_stage1", stage="stage1", retries=2)
    stage2_train = UniADTrainOperator(task_id="stage2_train", stage="stage2", retries=1, **gpu)
    validate_stage2 = ValidateStageOperator(task_id="validate_stage2", stage="stage2", retries=0)
    upload_stage2 = UploadArtifactsOperator(task_id="upload_stage2", stage="stage2", retries=2)

    chain(preflight, fetch, stage1_train, validate_stage1, promote, stage2_train, validate_stage2, upload_stage2)
    promote >> upload_stage1  # beside stage 2, which does not wait for the upload
