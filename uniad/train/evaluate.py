"""Standalone evaluation of a checkpoint: the root's ``tools/test.py`` through the same launcher as training, as
UniAD's ``tools/uniad_dist_eval.sh CFG CKPT N`` runs it, and the metrics it printed.

    python -m uniad evaluate --uniad-root /workspace/UniAD --config projects/configs/stage2_e2e/base_e2e.py \\
        --checkpoint ckpts/uniad_e2e.pth --nproc-per-node 8 --out metrics.json
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..errors import PipelineError
from ..metrics import parse_printed
from .launch import build_eval_launch, find_free_port
from .process import StageRun, worker_backend


def evaluate_checkpoint(
    uniad_root: str,
    config: str,
    checkpoint: str,
    *,
    nproc_per_node: int,
    python: str,
    launcher: str = "torchrun",
    backend: str = "auto",
    cfg_options: Sequence[str] = (),
    needs_gpus: bool = False,
    emit_output: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Run ``tools/test.py`` on ``checkpoint`` and return every metric it printed (the returned dict, and the
    motion, occupancy and planning tables). Raises TrainingFailed when it fails, PipelineError when it printed none;
    ``needs_gpus`` (profile uniad): LaunchError on a worker without GPUs, before anything is launched."""
    resolved, why = worker_backend(python, backend, nproc_per_node, "evaluate", needs_gpus)
    command = build_eval_launch(
        uniad_root=uniad_root, config=config, checkpoint=checkpoint, nproc_per_node=nproc_per_node,
        backend=resolved, master_port=find_free_port(), launcher=launcher, python=python, cfg_options=cfg_options,
        base_env=os.environ,
    )  # fmt: skip
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        if emit_output is not None:
            emit_output(line)

    StageRun(command, stage="evaluate", total_epochs=1, emit_output=keep, backend_reason=why).run()
    metrics: dict[str, float] = {}
    for _, values in parse_printed(lines):
        metrics.update(values)
    if not metrics:
        raise PipelineError(
            f"tools/test.py printed no metrics for {checkpoint}: check that {config} has an evaluation set "
            "(data.test) and that the checkpoint belongs to it"
        )
    return metrics
