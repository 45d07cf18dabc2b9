"""What the training dashboard shows for one pipeline run, computed from the artifacts the pipeline writes.

    run_view(plan, run_id, stage_states={"stage1": "running"}, promoted=None, gates={})

``plan`` is preflight's ``Plan``; each stage's work dir (or, once a newer run took it over, the run's archive in
``previous_runs/``) holds its mmcv logs, which give the progress, the curves and the health findings. Nothing here
keeps state of its own: a refresh reads the logs again, so a stage that is still training shows its latest record.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict

from ..health.analysis import analyze_log
from ..health.report import TASK_GROUPS, group_losses
from ..metrics import HEADLINE
from ..run.plan import Plan
from ..stages import STAGES
from ..train.progress import estimate_eta
from ..train.slurm import read_jobs
from ..workdir import WorkDir, log_start_time

MAX_POINTS = 1500  # per series: enough for a chart, small enough to refresh every few seconds


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def stage_view(
    directory: WorkDir | None,
    stage: str,
    *,
    max_epochs: int,
    nproc: int,
    active: bool = False,
    now: float | None = None,
    max_points: int = MAX_POINTS,
) -> dict:
    """Progress, timing, curves and health of one stage. ``active``: its training task is running now (its last
    attempt is still using GPUs, and silence in its log counts as a possible stall)."""
    now = time.time() if now is None else now
    view: dict = {
        "stage": stage,
        "max_epochs": max_epochs,
        "nproc": nproc,
        "dir": str(directory.path) if directory else None,
    }
    # executor=slurm: the stage's jobs (id, attempt, state, nodes) from its audit trail.
    view["slurm_jobs"] = read_jobs(directory) if directory is not None else []
    logs = directory.json_logs() if directory is not None else []
    if not logs:
        view.update(started=False, records=0, findings=[], verdict=None, series=None)
        return view
    last_change = max(log.stat().st_mtime for log in logs)
    analysis, rows, _ = analyze_log(
        logs,
        outputs=directory.outputs(),
        total_epochs=max_epochs,
        silence_s=max(now - last_change, 0.0) if active else None,
    )
    n = len(rows)
    if not n:  # launched: mmcv wrote the meta line, no train record yet
        view.update(
            started=True,
            records=0,
            attempts=len(logs),
            logs=[str(log) for log in logs],
            progress=0.0,
            last_log_update=last_change,
            findings=[],
            verdict=None,
            series=None,
        )
        return view
    per_epoch = analysis.latest["iters_per_epoch"] or max(rows.iter)
    total_iters = max_epochs * per_epoch
    done_iters = (rows.epoch[-1] - 1) * per_epoch + rows.iter[-1]

    # GPUs are held from an attempt's start (its log's name) to its last write, or to now for a running attempt.
    held_s = 0.0
    for i, log in enumerate(logs):
        start = log_start_time(log)
        if start is None:
            marker = directory.read_marker()
            start = marker.get("started") if marker else None
        end = now if active and i == len(logs) - 1 else log.stat().st_mtime
        if start is not None:
            held_s += max(end - start, 0.0)
    recent = [t for t in rows.time[-10:] if _finite(t)]
    seconds_per_iter = statistics.median(recent) if recent else None
    eta_s = estimate_eta(total_iters - done_iters, seconds_per_iter)[0] if seconds_per_iter is not None else None

    # What a crash now would cost: the work since the newest checkpoint a retry could resume from.
    checkpoint = None
    candidates = directory.resume_candidates()
    if candidates:
        (epochs_done, inner_iter), path = candidates[0]
        at_risk = max(done_iters - (epochs_done * per_epoch + inner_iter), 0)
        checkpoint = {
            "file": path.name,
            "epoch": epochs_done + 1 if inner_iter else epochs_done,
            "inner_iter": inner_iter,
            "at_risk_iters": at_risk,
            "at_risk_s": round(at_risk * seconds_per_iter, 1) if seconds_per_iter is not None else None,
        }

    view.update(
        started=True,
        records=n,
        attempts=len(logs),
        logs=[str(log) for log in logs],
        epoch=rows.epoch[-1],
        iter=rows.iter[-1],
        iters_per_epoch=per_epoch,
        total_iters=total_iters,
        done_iters=done_iters,
        progress=analysis.progress,
        loss=analysis.loss,
        seconds_per_iter=seconds_per_iter,
        elapsed_s=round(held_s, 1),
        gpu_hours=round(held_s * nproc / 3600, 4),
        eta_s=round(eta_s, 1) if eta_s is not None and active else None,
        checkpoint=checkpoint,
        last_log_update=last_change,
        verdict=analysis.verdict,
        findings=[asdict(f) for f in analysis.findings],
        series=_series(rows, per_epoch, max_points),
        evaluations=[
            {**e, "values": {k: v if _finite(v) else None for k, v in e["values"].items()}}
            for e in analysis.evaluations
        ],  # JSON has no NaN: a class-level nan is sent as null
    )
    return view


def _series(rows, per_epoch: int, max_points: int) -> dict:
    """Sampled curves against the stage's global iteration, and where each epoch starts."""
    n = len(rows)
    step = max(1, math.ceil(n / max_points))
    picked = list(range(0, n, step))
    if picked and picked[-1] != n - 1:
        picked.append(n - 1)

    def x_of(i: int) -> int:
        return (rows.epoch[i] - 1) * per_epoch + rows.iter[i]

    def clean(value: object) -> float | None:
        return value if _finite(value) else None  # JSON has no NaN; a gap in the line marks it

    groups: dict[str, list[float | None]] = {}
    epochs = []
    for slot, i in enumerate(picked):
        epochs.append(rows.epoch[i])
        for name, value in group_losses(rows.record(i)).items():
            groups.setdefault(name, [None] * len(picked))[slot] = clean(value)
    order = [g for g in TASK_GROUPS if g in groups] + sorted(set(groups) - set(TASK_GROUPS))
    boundaries = sorted(
        {(rows.epoch[i + 1] - 1) * per_epoch for i in range(n - 1) if rows.epoch[i + 1] != rows.epoch[i]}
    )
    return {
        "x": [x_of(i) for i in picked],
        "epoch": epochs,
        "iter": [rows.iter[i] for i in picked],
        "loss": [clean(rows.loss[i]) for i in picked],
        "grad_norm": [clean(rows.grad[i]) for i in picked],
        "lr": [clean(rows.lr[i]) for i in picked],
        "groups": {name: groups[name] for name in order},
        "epoch_starts": boundaries,
    }


def run_view(
    plan: Plan,
    run_id: str,
    *,
    stage_states: dict[str, str | None] | None = None,
    promoted: dict | None = None,
    published: dict | None = None,
    gates: dict[str, dict | None] | None = None,
    now: float | None = None,
) -> dict:
    """Both stages of a run on one iteration axis (stage 2 starts where stage 1's planned iterations end: the
    hand-off), the promoted checkpoint, and totals. ``stage_states``: each stage's training task's Airflow state, ``gates``
    stage -> the validate task's result, ``promoted`` the promote task's provenance, ``published`` the
    champion/challenger result."""
    stage_states = stage_states or {}
    gates = gates or {}
    now = time.time() if now is None else now
    stages = []
    offset = 0
    for stage in STAGES:
        spec = plan.stage(stage)
        state = stage_states.get(stage)
        work_dir = plan.work_dir(stage).for_run(run_id)
        view = stage_view(
            work_dir,
            stage,
            max_epochs=spec.max_epochs,
            nproc=spec.nproc_per_node * (plan.slurm.nnodes if plan.slurm else 1),
            # Deferred: its job trains, followed. Whatever the task's state says, a live holder of the work dir's
            # lease trains in it (a job whose task `airflow dags test` shows queued while it runs the trigger).
            active=state in ("running", "restarting", "deferred")
            or (work_dir is not None and work_dir.live_holder() is not None),
            now=now,
        )
        view.update(
            task_state=state,
            gate=gates.get(stage),
            config=spec.config,
            x_offset=offset,
            headline=HEADLINE.get(stage, []),
            references=plan.references(stage),
        )
        stages.append(view)
        offset += view.get("total_iters") or 0  # planned iterations; 0 until the stage has logged
    first, second = stages
    # Pipeline ETA: what is left of the running stage, plus stage 2 at stage 1's seconds per epoch if not started.
    eta = None
    if first.get("eta_s") is not None:
        eta = first["eta_s"]
        if not second["started"] and first.get("seconds_per_iter") and first.get("iters_per_epoch"):
            later = second["max_epochs"] * first["iters_per_epoch"]
            eta = estimate_eta(first["total_iters"] - first["done_iters"], first["seconds_per_iter"], later)[1]
    elif second.get("eta_s") is not None:
        eta = second["eta_s"]
    return {
        "run_id": run_id,
        "profile": plan.profile,
        "uniad_root": plan.uniad_root,
        "ckpt_path": plan.ckpt_path,
        "stages": stages,
        "handoff_x": second["x_offset"] if first["started"] else None,
        "promoted": promoted,
        "published": published,
        "eta_s": round(eta, 1) if eta is not None else None,
        "gpu_hours": round(sum(s.get("gpu_hours") or 0.0 for s in stages), 4),
        "generated_at": now,
    }
