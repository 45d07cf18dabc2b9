"""A stage as a Slurm batch job: check the cluster, submit, follow and cancel jobs, and keep the audit trail.

Every call is an argv list (sbatch, scontrol, scancel, sinfo); the async variants are for the trigger that follows
a job from Airflow's triggerer. ``<work_dir>/slurm_jobs.jsonl`` has one line per submitted job: job id, attempt,
nodes, state, submit, start and end time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from ..errors import ParamError, TrainingFailed
from ..workdir import WorkDir, sanitize_run_id
from .launch import SlurmSettings

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}
TERMINAL_FAILURES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
                     "DEADLINE"}  # fmt: skip


def check_cluster(slurm: SlurmSettings) -> dict:
    """Before a GPU is taken: sbatch is there, the partition exists and has ``nnodes`` nodes. Returns its facts."""
    if shutil.which("sbatch") is None:
        raise ParamError(
            "executor=slurm but sbatch is not on the PATH of the Airflow workers: install Slurm's client (Debian: "
            "apt-get install slurm-client) and point SLURM_CONF at the cluster's slurm.conf, or use executor=local"
        )
    listed = _run(["sinfo", "-h", "-o", "%P|%D|%G"])
    partitions = {}
    for line in listed.splitlines():
        name, nodes, gres = line.split("|")
        default = name.endswith("*")
        partitions[name.rstrip("*")] = {"nodes": int(nodes), "gres": gres, "default": default}
    name = slurm.partition or next((p for p, facts in partitions.items() if facts["default"]), None)
    if name not in partitions:
        raise ParamError(
            f"slurm_partition {slurm.partition!r} is not a partition of this cluster; partitions: "
            f"{', '.join(sorted(partitions)) or 'none'} (set slurm_partition or UNIAD_SLURM_PARTITION)"
        )
    facts = partitions[name]
    if slurm.nnodes > facts["nodes"]:
        raise ParamError(
            f"nnodes={slurm.nnodes} but partition {name} has {facts['nodes']} node(s); lower nnodes or pick a larger "
            "partition"
        )
    return {"partition": name, **facts}


def job_name(stage: str, run_id: str) -> str:
    """The name of every job of one stage of one run (what ``squeue`` shows; ``unfollowed_job`` looks it up)."""
    return f"uniad-{stage}-{sanitize_run_id(run_id)}"[:128]


def job_comment(attempt: int, work_dir: WorkDir) -> str:
    """The job's comment: which attempt submitted it, for which work dir."""
    return f"attempt={attempt}:{work_dir.path}"


def find_jobs(name: str, work_dir: WorkDir) -> list[tuple[str, int]]:
    """The jobs the cluster still knows (any state) named ``name`` for ``work_dir``, newest first, each with the
    attempt that submitted it."""
    listed = _run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i|%k"])
    found = []
    for line in listed.splitlines():
        job_id, _, comment = line.strip().partition("|")
        attempt, _, path = comment.partition(":")
        if path == str(work_dir.path) and attempt.startswith("attempt="):
            found.append((job_id, int(attempt.removeprefix("attempt="))))
    return sorted(found, key=lambda job: int(job[0]), reverse=True)


def unfollowed_job(name: str, work_dir: WorkDir, nnodes: int) -> tuple[str, dict[str, str]] | None:
    """The newest job named ``name`` for ``work_dir`` that the cluster knows and the audit trail does not know to
    have ended, with its state; its line in ``slurm_jobs.jsonl`` is added, and given its end if it ended.

    It covers the gap between ``sbatch`` and the task state store: a worker lost right after submitting (or before
    it recorded the job's end) leaves a job only the cluster knows about, which the task's next run must adopt
    rather than submit a second one."""
    recorded = {line["job_id"]: line.get("state") for line in read_jobs(work_dir)}
    found = [job for job in find_jobs(name, work_dir) if job[0] not in recorded or recorded[job[0]] in ACTIVE]
    if not found:
        return None
    job_id, submitted_by = found[0]
    state = job_state(job_id)
    if job_id not in recorded:
        record_job(work_dir, job_id, attempt=submitted_by, state=state["JobState"], partition=state.get("Partition"),
                   nnodes=nnodes)  # fmt: skip
    if state["JobState"] not in ACTIVE | {"COMPLETED"}:
        record_end(work_dir, job_id, state)
    return job_id, state


def submit_time(state: dict[str, str]) -> float | None:
    """The job's ``SubmitTime`` (the controller's local time) as a timestamp, when Slurm reports one."""
    try:
        return datetime.fromisoformat(state["SubmitTime"]).timestamp()
    except (KeyError, ValueError):
        return None


def submit(argv: list[str]) -> str:
    """Run sbatch; the job id (``--parsable`` prints ``id`` or ``id;cluster``)."""
    return _run(argv).strip().split(";")[0]


def _fields(text: str) -> dict[str, str]:
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key and key not in out:
            out[key] = value
    return out


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (JobState, NodeList, StartTime, EndTime, ExitCode, Reason, ...); a job
    Slurm no longer knows (older than MinJobAge) has JobState UNKNOWN."""
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    return _fields(done.stdout) if done.returncode == 0 and done.stdout.strip() else {"JobState": "UNKNOWN"}


async def ajob_state(job_id: str) -> dict[str, str]:
    proc = await asyncio.create_subprocess_exec(
        "scontrol", "show", "job", "-o", job_id, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    return _fields(out.decode()) if proc.returncode == 0 and out.strip() else {"JobState": "UNKNOWN"}


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], capture_output=True, text=True)


async def acancel(job_id: str) -> None:
    proc = await asyncio.create_subprocess_exec("scancel", job_id, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)  # fmt: skip
    await proc.wait()


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=os.environ)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TrainingFailed(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise TrainingFailed(f"{' '.join(argv[:2])} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


# ---------------------------------------------------------------------------------------------- audit trail
def record_end(work_dir: WorkDir, job_id: str, state: dict[str, str], status: str | None = None) -> dict:
    """Record how the job ended (``status``, else its JobState) with where and when it ran, from ``state``."""
    return record_job(work_dir, job_id, state=status or state["JobState"], nodes=state.get("NodeList"),
                      start=state.get("StartTime"), end=state.get("EndTime"), exit_code=state.get("ExitCode"))  # fmt: skip


def record_job(work_dir: WorkDir, job_id: str, **fields) -> dict:
    """Add or update the line of ``job_id`` in ``slurm_jobs.jsonl`` (rewritten atomically)."""
    path = work_dir.slurm_jobs
    lines = read_jobs(work_dir)
    for line in lines:
        if line["job_id"] == job_id:
            line.update(fields)
            break
    else:
        lines.append({"job_id": job_id, "submitted": time.time(), **fields})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    os.replace(tmp, path)
    return next(line for line in lines if line["job_id"] == job_id)


def read_jobs(work_dir: WorkDir) -> list[dict]:
    try:
        return [json.loads(line) for line in work_dir.slurm_jobs.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def tail(path: Path, lines: int = 40) -> list[str]:
    """The last lines of a job's output, for the task log when it failed (not every line: task logs stay small)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            return handle.read().decode(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []
