"""Deployment settings, read from the environment of the DAG processor and the workers (never from params)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from airflow.sdk import Asset

# Name only: a URI scheme would make Airflow load every provider's URI handlers at parse time (boto3 and more).
PROMOTED_ASSET = Asset(name="uniad_stage1_checkpoint", group="uniad")
# The end-to-end model, published when it is not worse than the champion (events: path, sha256, metrics, run id).
PUBLISHED_ASSET = Asset(name="uniad_e2e_model", group="uniad")


def gpus_per_worker() -> int:
    """``UNIAD_GPUS_PER_WORKER`` (default 8): the gpu pool slots one training task takes, a whole worker."""
    return int(os.environ.get("UNIAD_GPUS_PER_WORKER", "8"))


def runs_dir() -> Path:
    """``UNIAD_RUNS_DIR`` (default ``$AIRFLOW_HOME/uniad_runs``): where a mini run without ``uniad_root`` gets its
    folder."""
    default = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "uniad_runs"
    return Path(os.environ.get("UNIAD_RUNS_DIR", default))


def worker_jobs_dir() -> Path:
    """``UNIAD_WORKER_JOBS_DIR`` (default ``$AIRFLOW_HOME/uniad_local_jobs``): where a GPU worker lists the local
    jobs it started, so that it starts no second one on GPUs a detached job still holds. One per GPU worker (a
    folder of the host, not a shared one)."""
    default = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "uniad_local_jobs"
    return Path(os.environ.get("UNIAD_WORKER_JOBS_DIR", default))


def training_python() -> str:
    """``UNIAD_PYTHON`` (default: the worker's own): the interpreter with the UniAD stack that runs train.py. Read
    where it is used: by the GPU worker that launches an attempt, and by preflight's worker to read the configs
    with mmcv's Config (every worker's own interpreter has mmcv 1.x)."""
    return os.environ.get("UNIAD_PYTHON", sys.executable)


def slurm_export() -> list[str]:
    """``UNIAD_SLURM_EXPORT``: environment variables, comma-separated, that a Slurm job's ranks get from the
    submitting worker beside PATH, the locale, NCCL_* and OMP_* (``uniad.train.slurm.job_environment``), e.g.
    ``http_proxy,WANDB_MODE``. Nothing else travels: the worker's environment holds Airflow's secrets."""
    return [name.strip() for name in os.environ.get("UNIAD_SLURM_EXPORT", "").split(",") if name.strip()]


def allowed_roots(profile: str):
    """``UNIAD_ALLOWED_ROOTS`` (``uniad.run.allowlist``): the directories a run of ``profile`` may touch. Unset: the
    mini runs folder for ``mini``, and ``UNIAD_ROOT`` for any profile."""
    from uniad.run.allowlist import SETTING, AllowedRoots

    return AllowedRoots.from_setting(
        os.environ.get(SETTING), profile=profile, runs_dir=runs_dir(), default_root=default_root()
    )


def _seconds(name: str, default: str, what: str, *, zero: bool) -> float:
    """The seconds in environment variable ``name`` (``default`` when unset); ``what`` says what they are in the
    error that refuses a value that is not a number, is negative or, unless ``zero``, is 0."""
    value = os.environ.get(name, default)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name}={value!r}: give {what}")
    return seconds


def retry_delay_s() -> float:
    """``UNIAD_RETRY_DELAY_S`` (default 120): how long a failed task waits before its retry. A training retry
    resumes from the newest checkpoint, so the wait only needs to outlast a node's or a worker's restart."""
    return _seconds("UNIAD_RETRY_DELAY_S", "120", "the seconds a failed task waits before its retry", zero=True)


def slurm_controller_grace_s() -> float:
    """``UNIAD_SLURM_CONTROLLER_GRACE_S`` (default 900): how long a followed job's controller may not answer (a
    restart, a failover, ``Socket timed out`` under load) before the task fails for a retry; the job is not taken
    to have ended, and the retry re-attaches to it."""
    return _seconds(
        "UNIAD_SLURM_CONTROLLER_GRACE_S",
        "900",
        "the seconds Slurm's controller may be away from a followed job (default 900)",
        zero=False,
    )


def slurm_stop_signal_lead_s() -> int:
    """``UNIAD_SLURM_STOP_SIGNAL_LEAD_S`` (default 600): how long before a Slurm training job's time limit (its
    ``slurm_time_limit``, or the partition's when it names none) the job is sent ``USR2``
    (``--signal=B:USR2@LEAD``), on which the ranks write a checkpoint at their next iteration and stop, and the
    stage continues in a new job from there; 0 sends none (a job that hits its limit loses what it trained since its
    last checkpoint). Give it more than an iteration and a checkpoint's save: Slurm may send the signal up to a
    minute early, never late."""
    return int(
        _seconds(
            "UNIAD_SLURM_STOP_SIGNAL_LEAD_S",
            "600",
            "the seconds before a Slurm job's time limit its ranks checkpoint and stop (default 600; 0: never)",
            zero=True,
        )
    )


def slurm_partition() -> str | None:
    """``UNIAD_SLURM_PARTITION``: the partition of executor=slurm runs that name none (else the cluster's default)."""
    return os.environ.get("UNIAD_SLURM_PARTITION") or None


def default_root() -> str | None:
    """``UNIAD_ROOT``: the UniAD checkout on the GPU workers; makes ``uniad`` the form's default profile."""
    return os.environ.get("UNIAD_ROOT") or None


def schedule() -> str | Asset | None:
    """``UNIAD_SCHEDULE`` for retraining: empty (trigger only), a cron expression (``0 2 * * 0``), or
    ``asset:<uri>`` to train when that Asset is updated, e.g. ``asset:file:///data/nuscenes/infos_train.pkl``."""
    value = os.environ.get("UNIAD_SCHEDULE", "").strip()
    if not value:
        return None
    if value.startswith("asset:"):
        uri = value.removeprefix("asset:").strip()
        if not uri:
            raise ValueError("UNIAD_SCHEDULE=asset: needs a URI, e.g. asset:file:///data/nuscenes/infos_train.pkl")
        return Asset(uri=uri)
    return value


def notify_conn_id() -> str:
    """``UNIAD_NOTIFY_CONN_ID`` (default ``uniad_notify``): the connection run notifications and alerts go through
    (``uniad_airflow.alerts``)."""
    return os.environ.get("UNIAD_NOTIFY_CONN_ID", "uniad_notify")


def alert_pending_s() -> float:
    """``UNIAD_ALERT_PENDING_S`` (default 3600): a Slurm job that waits in the queue longer than this is alerted."""
    return _seconds("UNIAD_ALERT_PENDING_S", "3600", "the seconds a Slurm job may pend before an alert", zero=False)


def tracking_uri() -> str | None:
    """Where experiment tracking goes (``uniad.tracking``), or None when it is off: ``UNIAD_TRACKING=off`` turns it
    off; else MLflow's own ``MLFLOW_TRACKING_URI`` when set; else the connection ``uniad_mlflow``
    (``UNIAD_MLFLOW_CONN_ID``) with the server's URL as its host, e.g. ``airflow connections add uniad_mlflow
    --conn-type http --conn-host http://mlflow:5000``; else off."""
    if os.environ.get("UNIAD_TRACKING", "on").strip().lower() in ("off", "0", "false", "no"):
        return None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(os.environ.get("UNIAD_MLFLOW_CONN_ID", "uniad_mlflow"))
    except AirflowNotFoundException:
        return None
    host = conn.host or ""
    if "://" in host:
        return host.rstrip("/")
    return f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")


def mlflow_ui_url() -> str | None:
    """Where people open MLflow's UI (the dashboard links each run there): ``UNIAD_MLFLOW_UI_URL``, else an http(s)
    ``MLFLOW_TRACKING_URI`` (the tracking server serves the UI)."""
    url = os.environ.get("UNIAD_MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI") or ""
    return url.rstrip("/") if url.startswith(("http://", "https://")) else None
