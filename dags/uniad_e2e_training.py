"""
### UniAD staged end-to-end training

`preflight` → `stage1_train` (track + map) → `validate_stage1` → `promote_checkpoint` → `stage2_train` (end to end,
`load_from` the promoted file) → `validate_stage2`.

Trigger from the UI form, or:

    airflow dags trigger uniad_e2e_training -c '{"profile": "uniad", "uniad_root": "/workspace/UniAD"}'
    airflow dags test uniad_e2e_training -c '{"profile": "mini", "uniad_root": "/tmp/uniad-mini"}'

`profile=mini` trains the built-in mini UniAD (CPU, gloo) in `uniad_root`, or in a per-run folder when that is
empty. Training tasks run on the `gpu` queue and take `UNIAD_GPUS_PER_WORKER` slots of the `gpu` pool, so two
runs never share a worker's GPUs.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, chain

from uniad_airflow.operators import (
    DAG_ID,
    PromoteCheckpointOperator,
    UniADPreflightOperator,
    UniADTrainOperator,
    ValidateStageOperator,
)

# Worker-side settings, read from the environment at parse time (no metadata-DB or connection access here).
GPUS_PER_WORKER = int(os.environ.get("UNIAD_GPUS_PER_WORKER", "8"))
DEFAULT_ROOT = os.environ.get("UNIAD_ROOT") or None
CFG_OPTION = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.+$"}

with DAG(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
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
        "ckpt_path": Param(
            "ckpts/full_track_map.pth",
            type="string",
            title="Promoted checkpoint",
            description="Where the verified stage-1 checkpoint is published; stage 2 loads it (relative to the root).",
        ),
    },
) as dag:
    preflight = UniADPreflightOperator(task_id="preflight", retries=0)
    gpu = {"pool": "gpu", "pool_slots": GPUS_PER_WORKER, "queue": "gpu"}
    stage1_train = UniADTrainOperator(task_id="stage1_train", stage="stage1", retries=1, **gpu)
    validate_stage1 = ValidateStageOperator(task_id="validate_stage1", stage="stage1", retries=0)
    promote = PromoteCheckpointOperator(task_id="promote_checkpoint", retries=1)
    stage2_train = UniADTrainOperator(task_id="stage2_train", stage="stage2", retries=1, **gpu)
    validate_stage2 = ValidateStageOperator(task_id="validate_stage2", stage="stage2", retries=0)

    chain(preflight, stage1_train, validate_stage1, promote, stage2_train, validate_stage2)
