"""The batch step of a stage's Slurm job, run by sbatch on the job's first node with the training interpreter::

    /opt/uniad-venv/bin/python <work_dir>/.uniad_trainside/uniad_slurm_job.py <work_dir>/slurm-attempt-N.json

The job is submitted with ``--export=NONE``, so nothing of the submitting Airflow worker's environment (its
database URL, fernet key, JWT secret) reaches it: the job file names the ranks' environment (PYTHONPATH, PATH and
the deployment's allowlisted variables), Slurm adds its own. At every start of the job (its first, and each one
after Slurm requeued it: preemption, a lost node, ``scontrol requeue``) this step:

* chooses the resume point then, not when the job was submitted: the newest complete checkpoint in the work dir
  that is newer than the job file's (``--resume-from`` is rewritten), so a requeued job goes on from what it wrote
  instead of starting again from its first arguments;
* records the start in ``slurm-<job id>.job.json`` (restart count, nodes, resume point) and, when the ranks are
  done, the end (exit code and why: completed, failed, stopped for the time limit, terminated);
* points the ranks' rendezvous at the first node (its NodeAddr, a free port there) and runs ``srun`` over the
  ranks' argv from the job file: one task per GPU on every node, the job's CPUs per task and GPUs per node repeated
  on the srun line (since Slurm 22.05 a step does not inherit ``--cpus-per-task``), ``--export=ALL`` so the ranks get
  this environment, ``--kill-on-bad-exit`` so one dead rank ends the job instead of leaving the others waiting;
* takes the work dir's lease (``.uniad_lease.json``: holder, heartbeat), so a second job refuses to train while a
  live one holds it (exit 3, marker ``work_dir_held``);
* passes the stop signal (``--signal=B:USR2@LEAD``, sent to this step ahead of the time limit) on to the ranks,
  which write a checkpoint at their next iteration and exit ``STOPPED_FOR_TIME_LIMIT``; the job then ends with that
  code and the pipeline continues the stage in a new job from that checkpoint.

Standard library only, valid Python 3.8: it runs in UniAD's interpreter, where the pipeline is not installed.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

from uniad_workdir import (
    LEASE_WAIT_S,
    STOPPED_FOR_TIME_LIMIT,
    Lease,
    LeaseHeld,
    final_without_evaluation,
    lease_alive,
    read_job_marker,
    resume_candidates,
    waiting_for,
    write_job_marker,
)

STOP_SIGNAL = signal.SIGUSR2  # not USR1, which NCCL's watchdog may use
# A job that found another live job training in its work dir, and did not start its ranks.
WORK_DIR_HELD = 3
RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "RESIZING")


def node_addr(node, env):
    """The address Slurm reaches ``node`` at (NodeAddr), which its name need not resolve to."""
    shown = subprocess.run(
        ["scontrol", "show", "node", "-o", node], capture_output=True, text=True, env=env, check=True
    )
    for field in shown.stdout.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def holder_alive(lease, env):
    """Whether the holder of the work dir's lease trains on: a Slurm job while the controller says it runs (a job
    killed at its time limit leaves a lease behind), else by its process or heartbeat (``lease_alive``)."""
    holder = str(lease.get("holder") or "")
    if holder.startswith("slurm:"):
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", holder.split(":", 1)[1]], capture_output=True, text=True, env=env
        )
        if shown.returncode == 0 or "invalid job id" in shown.stderr.lower():
            return any("JobState=" + state in shown.stdout.split() for state in RUNNING)
    return lease_alive(lease, time.time())


def complete(path):
    """Whether a checkpoint was written to its end: torch's zip format ends with the archive's directory, which a
    save cut short by a kill lacks."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def choose_resume(resume, out=sys.stdout):
    """(checkpoint, position) to start from: the job file's, or a newer complete one that this job wrote before it
    was requeued (newer than the job file's: written after submission, by this job, so by its world size)."""
    chosen, position = resume.get("from"), resume.get("position")
    floor = tuple(position) if position else (0, 0)
    for found, path in resume_candidates(resume["work_dir"]):
        if found <= floor:
            break
        if final_without_evaluation(resume["work_dir"], found, resume["max_epochs"], resume["validate"]):
            out.write(f"not resuming from {path}: the final epoch's evaluation is not in the logs\n")
            continue
        if not complete(path):
            out.write(f"not resuming from {path}: it was not written to its end\n")
            continue
        return path, list(found)
    return chosen, position


def with_resume(argv, path):
    """train.py's argv resuming from ``path`` (None: from nothing)."""
    argv = list(argv)
    if "--resume-from" in argv:
        at = argv.index("--resume-from")
        del argv[at : at + 2]
    if path:
        at = argv.index("--cfg-options") if "--cfg-options" in argv else len(argv)
        argv[at:at] = ["--resume-from", path]
    return argv


class Job:
    """This start of the job: its marker in the work dir and the srun it supervises."""

    def __init__(self, job, env):
        self.work_dir = job["resume"]["work_dir"]
        self.job_id = env.get("SLURM_JOB_ID", "unknown")
        self.restart = int(env.get("SLURM_RESTART_COUNT") or 0)
        self.stop_requested = False
        self.terminated = False
        self.srun = None

    def record_start(self, nodes, resume_from, position):
        marker = read_job_marker(self.work_dir, self.job_id) or {"job_id": self.job_id, "starts": []}
        marker["starts"].append(
            {
                "restart": self.restart,
                "time": time.time(),
                "nodes": nodes,
                "resume_from": resume_from,
                "position": position,
            }
        )
        write_job_marker(self.work_dir, self.job_id, marker)

    def record_end(self, returncode, reason):
        marker = read_job_marker(self.work_dir, self.job_id) or {"job_id": self.job_id, "starts": [{}]}
        marker["starts"][-1]["end"] = {"time": time.time(), "returncode": returncode, "reason": reason}
        write_job_marker(self.work_dir, self.job_id, marker)

    def forward(self, signum, frame):
        if signum == STOP_SIGNAL:
            self.stop_requested = True
            print(f"uniad slurm job {self.job_id}: the time limit is near: the ranks checkpoint and stop")
        else:
            self.terminated = True
        sys.stdout.flush()
        if self.srun is not None and self.srun.poll() is None:
            self.srun.send_signal(signum)  # srun passes it on to every rank

    def run(self, argv, env):
        for signum in (STOP_SIGNAL, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.forward)
        self.srun = subprocess.Popen(argv, env=env)
        returncode = self.srun.wait()
        if returncode == 0:  # the signal came too late to matter: the stage's last iteration was done
            reason = "completed"
        elif self.stop_requested:  # at their checkpoint, or killed by the signal before they could handle it
            reason, returncode = "time_limit", STOPPED_FOR_TIME_LIMIT
        else:
            reason = "terminated" if self.terminated else "failed"
        self.record_end(returncode, reason)
        return returncode


def main(argv=None):
    (job_file,) = sys.argv[1:] if argv is None else argv
    with open(job_file) as handle:
        job = json.load(handle)
    env = dict(os.environ)  # Slurm's variables only: the job was submitted with --export=NONE
    env.update(job["env"])
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    env["MASTER_ADDR"], env["MASTER_PORT"] = node_addr(nodes[0], env), str(port)
    # As torchrun does for several ranks on a node: one intra-op thread each unless the job has more CPUs per task
    # (without it every rank starts a thread per core and they fight over the node's cores).
    env.setdefault("OMP_NUM_THREADS", env.get("SLURM_CPUS_PER_TASK", "1"))
    this = Job(job, env)
    resume_from, position = choose_resume(job["resume"])
    print(
        "uniad slurm job {}: {} node(s) {}, rendezvous {}:{}, restart {}, resuming from {}".format(
            this.job_id, len(nodes), nodes, env["MASTER_ADDR"], port, this.restart, resume_from or "nothing"
        ),
        flush=True,
    )
    this.record_start(nodes, resume_from, position)
    # Never two jobs training in one work dir, whatever submitted them (Slurm's singleton dependency covers the
    # jobs of one stage of one run; this covers the rest, local stages included).
    lease = Lease(this.work_dir, "slurm:" + this.job_id, alive=lambda held: holder_alive(held, env))

    def waiting(held):
        print(f"uniad slurm job {this.job_id}: {waiting_for(held, LEASE_WAIT_S)}", flush=True)

    try:
        lease.acquire(wait_s=LEASE_WAIT_S, on_wait=waiting)
    except LeaseHeld as exc:
        print(f"uniad slurm job {this.job_id}: not training: {exc}", flush=True)
        this.record_end(WORK_DIR_HELD, "work_dir_held")
        sys.exit(WORK_DIR_HELD)
    srun = ["srun", "--export=ALL", "--kill-on-bad-exit=1"] + job["srun"] + with_resume(job["argv"], resume_from)
    try:
        returncode = this.run(srun, env)
    finally:
        lease.release()
    sys.exit(returncode)


if __name__ == "__main__":
    main()
