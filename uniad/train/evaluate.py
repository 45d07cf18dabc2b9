"""Standalone evaluation of a checkpoint: the root's ``tools/test.py`` through the same launcher as training, as
UniAD's ``tools/uniad_dist_eval.sh CFG CKPT N`` runs it, and the metrics it printed.

    python -m uniad evaluate --uniad-root /workspace/UniAD --config projects/configs/stage2_e2e/base_e2e.py \\
        --checkpoint ckpts/uniad_e2e.pth --nproc-per-node 8 --out metrics.json
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from ..errors import PipelineError, TrainingFailed
from ..metrics import parse_printed
from ..workdir import WorkDir
from .launch import SlurmSettings, StageSpec, build_eval_launch, build_slurm_job, find_free_port, ship_trainside
from .process import StageRun, worker_backend

logger = logging.getLogger(__name__)


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
        uniad_root=uniad_root,
        config=config,
        checkpoint=checkpoint,
        nproc_per_node=nproc_per_node,
        backend=resolved,
        master_port=find_free_port(),
        launcher=launcher,
        python=python,
        cfg_options=cfg_options,
        base_env=os.environ,
    )
    lines: list[str] = []

    def keep(line: str) -> None:
        lines.append(line)
        if emit_output is not None:
            emit_output(line)

    StageRun(command, stage="evaluate", total_epochs=1, emit_output=keep, backend_reason=why).run()
    return _printed_metrics(lines, checkpoint, config)


def evaluate_checkpoint_on_slurm(
    spec: StageSpec,
    slurm_settings: SlurmSettings,
    checkpoint: str,
    *,
    work_dir: WorkDir,
    env: Mapping[str, str],
    job_name: str,
    poll_s: float = 5.0,
    emit: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """``tools/test.py`` on ``checkpoint`` as a Slurm job on one node of the stage's partition, with its GPUs
    (``tools/uniad_slurm_eval.sh``), waited for; the metrics it printed. ``work_dir``: where its job file and output
    go. ``spec.python``: the training interpreter on the compute nodes."""
    from .slurm import ACTIVE, check_cluster, job_state, submit, tail

    single = replace(slurm_settings, nnodes=1)
    facts = check_cluster(single, spec.nproc_per_node, needs_gpus=spec.needs_gpus)
    backend = spec.backend if spec.backend != "auto" else ("nccl" if single.gpus_per_node else "gloo")
    work_dir.path.mkdir(parents=True, exist_ok=True)
    job_file = work_dir.slurm_job_file(1)
    argv, job = build_slurm_job(
        spec,
        single,
        backend=backend,
        job_name=job_name,
        comment=f"evaluate:{checkpoint}",
        job_file=job_file,
        output=work_dir.slurm_output("%j"),
        trainside=ship_trainside(work_dir.trainside),
        cpus_per_task=facts["cpus_per_task"],
        env=env,
        evaluate=checkpoint,
    )
    job_file.write_text(json.dumps(job, indent=2) + "\n")
    job_id = submit(argv)
    (emit or logger.info)(f"evaluating {checkpoint} in Slurm job {job_id}: {argv}")
    while (state := job_state(job_id))["JobState"] in ACTIVE:
        time.sleep(poll_s)
    output = work_dir.slurm_output(job_id)
    lines = output.read_text(errors="replace").splitlines() if output.exists() else []
    if state["JobState"] != "COMPLETED":
        raise TrainingFailed(
            f"evaluating {checkpoint}: Slurm job {job_id} ended {state['JobState']} (exit code "
            f"{state.get('ExitCode')}, reason {state.get('Reason')})",
            tail=tail(output),
        )
    return _printed_metrics(lines, checkpoint, spec.config)


def _printed_metrics(lines: Sequence[str], checkpoint: str, config: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for _, values in parse_printed(lines):
        metrics.update(values)
    if not metrics:
        raise PipelineError(
            f"tools/test.py printed no metrics for {checkpoint}: check that {config} has an evaluation set "
            "(data.test) and that the checkpoint belongs to it"
        )
    return metrics
