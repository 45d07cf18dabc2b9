"""What mmcv 1.x needs to run on a CPU-only machine; inert wherever the real libraries work.

* ``mmcv.runner.checkpoint`` imports torchvision at module load, only to resolve ``torchvision://`` weights. There
  is no CPU build of torchvision for our torch, so when (and only when) it cannot be imported we register an empty
  stand-in whose use fails loudly.
* ``mmcv.runner.init_dist('pytorch')`` and ``init_dist('slurm')`` call ``torch.cuda.set_device(rank %
  device_count())``, a ZeroDivisionError without GPUs. With GPUs we call mmcv's own function; without, we do the
  same initialisation minus that line (for slurm: rank, world size and local rank from srun's SLURM_* variables,
  the first node of the job as MASTER_ADDR unless the job set one). The real stack keeps the ZeroDivisionError,
  and the pipeline refuses profile uniad on a worker without GPUs before launch (tests/standin exercises it).
* mmcv's EpochBasedRunner pauses 2 s before every epoch, against DataLoader worker processes deadlocking at the
  epoch transition, and 1 s after the run, for asynchronous loggers. A mini run without loader workers
  (``workers_per_gpu=0``, its configs' default) has neither to wait for: ``skip_epoch_pauses`` drops the pauses.
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import subprocess
import sys
import types

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def ensure_torchvision_importable() -> bool:
    """Return True when a stand-in had to be installed (torchvision missing)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        return False

    def _unavailable(*_args, **_kwargs):
        raise RuntimeError(
            "torchvision is not installed in this environment; 'torchvision://' checkpoints cannot be loaded. "
            "Use a local file path for load_from/pretrained instead."
        )

    stub = types.ModuleType("torchvision")
    stub.__version__ = "0.0.0+unavailable"
    stub.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    models.list_models = _unavailable
    models.get_model_weights = _unavailable
    stub.models = models
    sys.modules["torchvision"] = stub
    sys.modules["torchvision.models"] = models
    return True


def skip_epoch_pauses() -> None:
    """Make mmcv's epoch runner skip its pauses (a 26-epoch pipeline run is 53 s shorter). Only for a run whose data
    is loaded in the training process: with loader workers the pause is what keeps an epoch transition safe."""
    from mmcv.runner import epoch_based_runner

    epoch_based_runner.time = types.SimpleNamespace(sleep=lambda seconds: None)


def init_dist(launcher: str, backend: str = "nccl", **kwargs) -> None:
    """mmcv's ``init_dist`` where CUDA exists; the same process-group setup without the device pinning otherwise."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        from mmcv.runner import init_dist as mmcv_init_dist

        mmcv_init_dist(launcher, backend=backend, **kwargs)
        return
    if launcher not in ("pytorch", "slurm"):
        raise RuntimeError(f"launcher {launcher!r} needs GPUs; on a CPU-only machine use --launcher pytorch or slurm")
    if backend == "nccl":
        raise RuntimeError(
            "dist_params.backend='nccl' needs CUDA GPUs and none are visible on this machine. "
            "Use gloo: --cfg-options dist_params.backend=gloo (the pipeline's backend='auto' picks it for you)."
        )
    if launcher == "slurm":
        proc_id, ntasks = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        if "MASTER_ADDR" not in os.environ:
            hosts = subprocess.run(
                ["scontrol", "show", "hostnames", os.environ["SLURM_NODELIST"]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            os.environ["MASTER_ADDR"] = hosts[0]
        os.environ.setdefault("MASTER_PORT", str(kwargs.pop("port", None) or 29500))
        os.environ.update(WORLD_SIZE=str(ntasks), RANK=str(proc_id), LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"))
    kwargs.pop("port", None)
    logger.debug("initialising %s process group without CUDA (rank %s)", backend, os.environ.get("RANK"))
    dist.init_process_group(backend=backend, **kwargs)
