"""The worker probes for real: NCCL's one-element all-reduce launched with torchrun on this worker."""

from __future__ import annotations

import pytest


def test_nccl_probe_reports_why_it_failed_on_a_cpu_worker():
    """A real probe run; on a machine without CUDA it must fail and say why (on a GPU worker it passes)."""
    import sys

    import torch

    from uniad.train.process import probe_nccl

    if torch.cuda.is_available():
        pytest.skip("this worker has CUDA: the failing path is not reachable here")
    error = probe_nccl(sys.executable, 1, timeout_s=120)
    assert error and ("CUDA" in error or "NCCL" in error or "Error" in error), error
