"""Deployment settings, read from the environment of the DAG processor and the workers (never from params)."""

from __future__ import annotations

import os

from airflow.sdk import Asset

# Name only: a URI scheme would make Airflow load every provider's URI handlers at parse time (boto3 and more).
PROMOTED_ASSET = Asset(name="uniad_stage1_checkpoint", group="uniad")


def gpus_per_worker() -> int:
    """``UNIAD_GPUS_PER_WORKER`` (default 8): the gpu pool slots one training task takes, a whole worker."""
    return int(os.environ.get("UNIAD_GPUS_PER_WORKER", "8"))


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
