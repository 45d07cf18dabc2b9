"""A stage as a Slurm batch job: check the cluster, submit, follow and cancel jobs, and keep the audit trail.

Every call is an argv list (sbatch, scontrol, scancel, sinfo); the async variants are for the trigger that follows
a job from Airflow's triggerer. ``<work_dir>/slurm_jobs.jsonl`` has one line per submitted job: job id, attempt,
nodes, state, submit, start and end time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from ..errors import ParamError, TrainingFailed
from ..trainside.uniad_workdir import STOPPED_FOR_TIME_LIMIT
from ..workdir import WorkDir, sanitize_run_id
from .launch import SlurmSettings

logger = logging.getLogger(__name__)

ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
}
# Not Slurm states. TIME_LIMIT: the job's ranks checkpointed and stopped on the signal sent ahead of its time limit
# (its batch step says so; Slurm says FAILED with the exit code STOPPED_FOR_TIME_LIMIT). UNREACHABLE: scontrol got
# no answer from the controller, so nothing is known of the job (it may well run on).
TIME_LIMIT = "TIME_LIMIT"
UNREACHABLE = "UNREACHABLE"
# Ends that say nothing against the training: the stage continues in a new job from its newest checkpoint.
CONTINUED = {"PREEMPTED", "NODE_FAIL", "TIMEOUT", TIME_LIMIT}
SCONTROL_TIMEOUT_S = 60
NO_ANSWER = f"scontrol did not answer in {SCONTROL_TIMEOUT_S} s"


# What a job's ranks get of the submitting worker's environment: where programs, libraries and the locale are, and
# NCCL's and OpenMP's settings. Nothing else: a worker's environment holds Airflow's database URL, fernet key and
# JWT secret, which sbatch's default --export=ALL would copy into every job.
PASSED_NAMES = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
PASSED_PREFIXES = ("NCCL_", "OMP_", "MKL_")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def job_environment(environ: Mapping[str, str], extra_names: Sequence[str] = ()) -> dict[str, str]:
    """The environment a job's ranks get from the submitting worker: ``PASSED_NAMES``, ``PASSED_PREFIXES`` and the
    deployment's ``extra_names`` (``UNIAD_SLURM_EXPORT``); never an Airflow setting."""
    for name in extra_names:
        if not _ENV_NAME.match(name) or name.upper().startswith("AIRFLOW"):
            raise ParamError(
                f"UNIAD_SLURM_EXPORT names {name!r}: give environment variable names, comma-separated, e.g. "
                "http_proxy,WANDB_MODE; Airflow's own settings never go into a job"
            )
    return {
        key: value
        for key, value in environ.items()
        if key in PASSED_NAMES or key.startswith(PASSED_PREFIXES) or key in extra_names
    }


def gpus_per_node(gres: str, gpu_type: str | None = None) -> int:
    """GPUs per node in sinfo's GRES column (``gpu:8``, ``gpu:a100:8(S:0-1)``, ``gpu:a100:4,gpu:v100:4``), of
    ``gpu_type`` when given; 0 for ``(null)``."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu" or len(parts) < 2 or not parts[-1].isdigit():
            continue
        kind = parts[1] if len(parts) == 3 else None
        if gpu_type is None or kind == gpu_type:
            total += int(parts[-1])
    return total


def check_cluster(slurm: SlurmSettings, nproc_per_node: int, *, needs_gpus: bool) -> dict:
    """Before a GPU is taken: sbatch is there, the partition exists with ``nnodes`` nodes, the GPUs per node the
    stage asks for (``needs_gpus``: profile uniad, whose ranks die without one) and CPUs for its ranks. Returns its
    facts, with ``cpus_per_task`` decided: the setting, else the partition's CPUs per GPU (UniAD's script: 5)."""
    if shutil.which("sbatch") is None:
        raise ParamError(
            "executor=slurm but sbatch is not on the PATH of the Airflow workers: install Slurm's client (Debian: "
            "apt-get install slurm-client) and point SLURM_CONF at the cluster's slurm.conf, or use executor=local"
        )
    partitions: dict[str, dict] = {}
    for line in _run(["sinfo", "-h", "-o", "%P|%D|%G|%c"]).splitlines():
        name, nodes, gres, cpus = line.split("|")
        entry = partitions.setdefault(
            name.rstrip("*"),
            {"nodes": 0, "gres": gres, "default": name.endswith("*"), "gpus_per_node": None, "cpus_per_node": None},
        )
        # Nodes of one partition that differ are listed apart: count them all, and plan for the smallest.
        entry["nodes"] += int(nodes)
        gpus, cores = gpus_per_node(gres, slurm.gpu_type), int(cpus.rstrip("+"))
        entry["gpus_per_node"] = gpus if entry["gpus_per_node"] is None else min(entry["gpus_per_node"], gpus)
        entry["cpus_per_node"] = cores if entry["cpus_per_node"] is None else min(entry["cpus_per_node"], cores)
    name = slurm.partition or next((p for p, facts in partitions.items() if facts["default"]), None)
    if name not in partitions:
        raise ParamError(
            f"slurm_partition {slurm.partition!r} is not a partition of this cluster; partitions: "
            f"{', '.join(sorted(partitions)) or 'none'} (set slurm_partition or UNIAD_SLURM_PARTITION)"
        )
    facts = {"partition": name, **partitions[name]}
    if slurm.nnodes > facts["nodes"]:
        raise ParamError(
            f"nnodes={slurm.nnodes} but partition {name} has {facts['nodes']} node(s); lower nnodes or pick a larger "
            "partition"
        )
    gpus, kind = facts["gpus_per_node"], f" of type {slurm.gpu_type}" if slurm.gpu_type else ""
    if needs_gpus and not slurm.gpus_per_node:
        raise ParamError(
            "profile uniad needs a GPU per rank, and this job would request none: set slurm_gpus_per_node (default: "
            "nproc_per_node)"
        )
    if slurm.gpus_per_node > gpus:
        raise ParamError(
            f"slurm_gpus_per_node={slurm.gpus_per_node} but the nodes of partition {name} have {gpus} GPU(s){kind} "
            f"(sinfo GRES {facts['gres']!r}); pick a GPU partition with slurm_partition, or lower nproc_per_node and "
            "slurm_gpus_per_node"
        )
    cpus = facts["cpus_per_node"]
    # The partition's CPUs per GPU; on a partition without GPUs (the mini), the node's CPUs shared by the ranks.
    facts["cpus_per_task"] = slurm.cpus_per_task or max(1, cpus // (gpus or nproc_per_node))
    if facts["cpus_per_task"] * nproc_per_node > cpus:
        raise ParamError(
            f"{nproc_per_node} rank(s) x slurm_cpus_per_task={facts['cpus_per_task']} is more than the {cpus} CPUs of "
            f"a node of partition {name}; lower slurm_cpus_per_task"
        )
    return facts


def job_name(stage: str, run_id: str) -> str:
    """The name of every job of one stage of one run (what ``squeue`` shows; ``unfollowed_job`` looks it up)."""
    return f"uniad-{stage}-{sanitize_run_id(run_id)}"[:128]


def job_comment(attempt: int, work_dir: WorkDir) -> str:
    """The job's comment: which attempt submitted it, for which work dir."""
    return f"attempt={attempt}:{work_dir.path}"


def _listed(argv: list[str]) -> list[tuple[str, str, int | None, str]]:
    """The jobs ``squeue ... --format=%i|%T|%k`` lists: id, state, and from the comment (``job_comment``) the
    attempt that submitted it and its work dir (None and "" for a job this pipeline did not submit)."""
    found = []
    for line in _run(argv).splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")
        attempt, _, path = comment.partition(":")
        ours = attempt.startswith("attempt=") and attempt.removeprefix("attempt=").isdigit()
        found.append((job_id, state, int(attempt.removeprefix("attempt=")) if ours else None, path if ours else ""))
    return found


def find_jobs(name: str, work_dir: WorkDir) -> list[tuple[str, int, str]]:
    """The jobs the cluster still knows (any state) named ``name`` for ``work_dir``, newest first, each with the
    attempt that submitted it and its state."""
    listed = _listed(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i|%T|%k"])
    found = [(job_id, attempt, state) for job_id, state, attempt, path in listed if path == str(work_dir.path)]
    return sorted(found, key=lambda job: int(job[0]), reverse=True)


def unfollowed_job(name: str, work_dir: WorkDir, nnodes: int) -> tuple[str, dict[str, str]] | None:
    """The job of ``name`` for ``work_dir`` that a new attempt must adopt rather than submit a second one beside:
    the newest the cluster reports active, whatever the audit trail says of it (a follower that took a controller's
    silence for an end recorded one), else the newest the audit trail does not know to have ended; with its state.
    Its line in ``slurm_jobs.jsonl`` is added, and given its end if it ended.

    It covers the gap between ``sbatch`` and the task state store: a worker lost right after submitting (or before
    it recorded the job's end) leaves a job only the cluster knows about."""
    recorded = {line["job_id"]: line.get("state") for line in read_jobs(work_dir)}
    listed = find_jobs(name, work_dir)
    found = [job for job in listed if job[2] in ACTIVE] or [
        job for job in listed if job[0] not in recorded or recorded[job[0]] in ACTIVE
    ]
    if not found:
        return None
    job_id, submitted_by, _ = found[0]
    state = job_state(job_id)
    if state["JobState"] == UNREACHABLE:
        raise TrainingFailed(f"Slurm's controller stopped answering about job {job_id}: {state.get('Reason')}")
    if job_id in recorded and recorded[job_id] not in ACTIVE and state["JobState"] in ACTIVE:
        record_job(work_dir, job_id, state=state["JobState"], end=None)  # the end recorded was none
    if job_id not in recorded:
        record_job(
            work_dir,
            job_id,
            attempt=submitted_by,
            state=state["JobState"],
            partition=state.get("Partition"),
            nnodes=nnodes,
        )
    if state["JobState"] not in ACTIVE | {"COMPLETED"}:
        record_end(work_dir, job_id, state)
    return job_id, state


def cancel_run_jobs(run_id: str, stages: Sequence[str]) -> list[str]:
    """Cancel every job of ``run_id``'s ``stages`` that is still pending or running, and record its end in the audit
    trail of its work dir (named in the job's comment) when that trail lists it: the ids cancelled.

    A run that ends must leave no job training: the trigger's ``on_kill`` cancels the job it follows when the task is
    marked failed, but a task marked failed before a triggerer picked its trigger up (or while no triggerer runs)
    has no trigger to kill, and its job would train on, alone, for days."""
    cancelled = []
    for stage in stages:
        argv = ["squeue", "--noheader", "--me", f"--name={job_name(stage, run_id)}", "--format=%i|%T|%k"]
        for job_id, _, _, path in _listed(argv):
            work_dir = WorkDir(Path(path)) if Path(path).is_absolute() else None
            cancel_job(work_dir, job_id)
            cancelled.append(job_id)
    return cancelled


def cancel_job(work_dir: WorkDir | None, job_id: str) -> dict[str, str]:
    """``scancel`` the job, then record it CANCELLED with its end in ``work_dir``'s audit trail when that lists it (a
    job that had ended first keeps its end; no answer from the controller right after: the trail keeps what it
    knew). Its state after the cancel."""
    try:
        _run(["scancel", job_id])
    except TrainingFailed as exc:  # ended already, or no answer: the state read next says which
        logger.warning("scancel %s: %s", job_id, exc)
    state = job_state(job_id)
    if work_dir is not None and state["JobState"] != UNREACHABLE:
        if any(job["job_id"] == job_id for job in read_jobs(work_dir)):
            # COMPLETING while its steps are killed: cancelled all the same.
            record_end(work_dir, job_id, state, status="CANCELLED" if state["JobState"] in ACTIVE else None)
    return state


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


def _state_of(returncode: int | None, out: str, err: str) -> dict[str, str]:
    if returncode == 0 and out.strip():
        return _fields(out)
    if "invalid job id" in err.lower():
        return {"JobState": "UNKNOWN"}
    # Not an answer about the job: the controller restarting, failing over or too busy to answer in time.
    return {"JobState": UNREACHABLE, "Reason": (err.strip() or f"scontrol exited {returncode}")[-500:]}


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (JobState, NodeList, StartTime, EndTime, ExitCode, Reason, ...); a job
    Slurm no longer knows (older than MinJobAge) has JobState UNKNOWN; no answer from the controller (down,
    restarting, timed out) is JobState ``UNREACHABLE``, which says nothing about the job."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return _state_of(None, "", NO_ANSWER)
    return _state_of(done.returncode, done.stdout, done.stderr)


async def ajob_state(job_id: str) -> dict[str, str]:
    """``job_state`` for the triggerer's event loop."""
    proc = await asyncio.create_subprocess_exec(
        "scontrol", "show", "job", "-o", job_id, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCONTROL_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return _state_of(None, "", NO_ANSWER)
    return _state_of(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def end_status(state: dict[str, str], work_dir: WorkDir, job_id: str) -> str:
    """How an ended job ended, in one word: its JobState, but TIME_LIMIT for a job whose ranks stopped at a
    checkpoint on the signal ahead of the limit (its batch step's marker says so)."""
    if state["JobState"] == "FAILED" and state.get("ExitCode", "").split(":")[0] == str(STOPPED_FOR_TIME_LIMIT):
        marker = work_dir.job_marker(job_id) or {}
        end = ((marker.get("starts") or [{}])[-1]).get("end") or {}
        if end.get("reason") == "time_limit":
            return TIME_LIMIT
    return state["JobState"]


def forgotten_job_state(job_id: str, work_dir: WorkDir) -> dict[str, str]:
    """The end of a job the controller no longer knows (older than MinJobAge, e.g. after a long triggerer outage):
    from accounting (``sacct``) where the cluster keeps it, else from the marker its batch step wrote in the work
    dir. A job that started and left no end (its node lost power, a SIGKILL) is ``LOST``; one with neither record
    stays ``UNKNOWN``."""
    try:
        done = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,ExitCode,Start,End,NodeList"],
            capture_output=True,
            text=True,
            timeout=SCONTROL_TIMEOUT_S,
        )
        line = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        line = ""
    if line.count("|") == 4:
        state, exit_code, start, end, nodes = line.split("|")
        return {
            "JobState": state.split()[0],  # "CANCELLED by 0"
            "ExitCode": exit_code,
            "StartTime": start,
            "EndTime": end,
            "NodeList": nodes,
            "Reason": "from sacct: the controller no longer knows the job",
        }
    marker = work_dir.job_marker(job_id)
    if not marker or not marker.get("starts"):
        return {"JobState": "UNKNOWN", "Reason": "the controller no longer knows the job, and it left no record"}
    last = marker["starts"][-1]
    started = {"StartTime": _iso(last.get("time")), "NodeList": ",".join(last.get("nodes") or [])}
    end = last.get("end")
    if end is None:
        return {
            **started,
            "JobState": "LOST",
            "Reason": "the controller no longer knows the job and its batch step recorded no end: it was killed "
            "(its node lost, a SIGKILL)",
        }
    state = {"completed": "COMPLETED", "time_limit": "FAILED", "terminated": "CANCELLED"}.get(end["reason"], "FAILED")
    return {
        **started,
        "JobState": state,
        "ExitCode": f"{end.get('returncode')}:0",
        "EndTime": _iso(end.get("time")),
        "Reason": "from the batch step's marker: the controller no longer knows the job",
    }


def _iso(stamp: float | None) -> str | None:
    return datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp else None


async def acancel(job_id: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "scancel", job_id, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
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
    return record_job(
        work_dir,
        job_id,
        state=status or state["JobState"],
        nodes=state.get("NodeList"),
        start=state.get("StartTime"),
        end=state.get("EndTime"),
        exit_code=state.get("ExitCode"),
        **({"restarts": int(state["Restarts"])} if str(state.get("Restarts", "")).isdigit() else {}),
    )


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
