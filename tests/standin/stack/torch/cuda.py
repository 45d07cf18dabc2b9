"""Stand-in CUDA: the devices are those CUDA_VISIBLE_DEVICES names, as Slurm's GRES or a GPU worker sets it."""

import os

_current = None


def device_count():
    return len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])


def is_available():
    return device_count() > 0


def set_device(index):
    global _current
    if not 0 <= index < device_count():
        raise RuntimeError("CUDA error: invalid device ordinal")
    _current = index


def current_device():
    if _current is None:
        raise RuntimeError("no CUDA device was set")
    return _current


def max_memory_allocated(device=None):
    return 17 * 1024**3  # what UniAD stage 2 takes per GPU
