"""What a worker can train with: how many GPUs the training interpreter sees, and whether NCCL works across them.

Both run in the training interpreter (``UNIAD_PYTHON``), which may not be this process's: a one-line torch import
for the count, a one-element NCCL all-reduce over ``nproc_per_node`` ranks for the backend.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from ..errors import LaunchError, TrainingFailed
from .launch import StageSpec, find_free_port

TAIL_LINES = 40


def probe_visible_gpus(python: str, timeout_s: float = 120.0) -> int:
    """How many CUDA devices the training interpreter sees (it may not be this process's interpreter). A machine
    without NVIDIA device files, where nothing names devices in CUDA_VISIBLE_DEVICES either, has none, which is
    known without starting an interpreter and importing torch."""
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return 0
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrainingFailed(
            f"could not run the training interpreter {python!r} to count GPUs: {exc}. "
            "Set UNIAD_PYTHON to the python that has torch and mmcv installed."
        ) from exc
    if done.returncode != 0:
        raise TrainingFailed(
            f"the training interpreter {python!r} cannot import torch (exit code {done.returncode}). "
            "Set UNIAD_PYTHON to the python that has torch and mmcv installed.",
            returncode=done.returncode,
            tail=done.stderr.strip().splitlines()[-TAIL_LINES:],
        )
    return int(done.stdout.strip().splitlines()[-1])


_NCCL_PROBE = """
import os, torch, torch.distributed as dist
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
value = torch.ones(1, device="cuda")
dist.all_reduce(value)
torch.cuda.synchronize()
assert int(value.item()) == dist.get_world_size(), value.item()
dist.destroy_process_group()
"""


def probe_nccl(python: str, nproc_per_node: int, timeout_s: float = 180.0) -> str | None:
    """Run a one-element NCCL all-reduce across ``nproc_per_node`` ranks; None if it worked, else why not."""
    with tempfile.TemporaryDirectory(prefix="uniad-nccl-probe-") as tmp:
        script = Path(tmp) / "nccl_probe.py"
        script.write_text(_NCCL_PROBE)
        argv = [
            python,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc_per_node={nproc_per_node}",
            "--master_addr=127.0.0.1",
            f"--master_port={find_free_port()}",
            str(script),
        ]
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            env={**os.environ, "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")},
        )
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"the probe all-reduce did not finish within {timeout_s:.0f} s"
    if proc.returncode == 0:
        return None
    # The rank's own exception, not torchrun's ChildFailedError summary that follows it.
    errors = [
        line.strip()
        for line in output.splitlines()
        if re.match(r"^(\[rank\d+\]: )?[\w.]*(Error|Exception|NCCL)\b", line.strip()) and "ChildFailedError" not in line
    ]
    return (errors[0] if errors else f"probe exited with code {proc.returncode}")[:500]


def check_gpus(visible_gpus: int, python: str) -> None:
    """A stage or evaluation that needs GPUs (profile uniad) on a worker whose training interpreter sees none:
    refused before launch, saying what to fix. UniAD's ranks would each die inside mmcv's init
    (``torch.cuda.set_device(rank % 0)``: ZeroDivisionError)."""
    if visible_gpus == 0:
        raise LaunchError(
            f"profile uniad needs a GPU per rank, and the training interpreter {python} on this worker sees none "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): UniAD's ranks would die in "
            "mmcv's init (torch.cuda.set_device(rank % 0)). Run it on a GPU worker (the gpu queue); check that "
            "worker's NVIDIA driver and /dev/nvidia* devices, that UNIAD_PYTHON is a CUDA build of torch, and "
            "CUDA_VISIBLE_DEVICES; or try the pipeline on CPUs with profile mini"
        )


def check_data_files(spec: StageSpec) -> None:
    """The data files the stage's config names, as this worker sees them: preflight checked them on its own worker,
    which may mount other paths than the one that trains."""
    missing = [path for path in spec.data_files if not Path(path).is_file()]
    if missing:
        raise LaunchError(
            f"{spec.config} needs data files this worker does not see: {', '.join(missing)}. Mount UniAD's data at "
            "the same path on every GPU worker and compute node as on the workers that run preflight"
        )
