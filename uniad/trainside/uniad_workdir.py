"""The file names and checkpoint meta keys of a stage's work dir that the training side writes and the pipeline
reads, and the few rules both sides apply to them. Both import this module: the pipeline as
``uniad.trainside.uniad_workdir``, the training processes and the Slurm batch step as ``uniad_workdir`` (this folder
is on their PYTHONPATH). Standard library only, valid Python 3.8."""

import json
import os
import re
import time

LATEST = "latest.pth"  # mmcv's CheckpointHook: a symlink to the newest epoch file
EPOCH_FILE = "epoch_{}.pth"
EPOCH_PATTERN = re.compile(r"^epoch_(\d+)\.pth$")
ITER_FILE = "epoch_{}_iter_{}.pth"  # a checkpoint inside epoch E after K of its iterations
ITER_PATTERN = re.compile(r"^epoch_(\d+)_iter_(\d+)\.pth$")
# Checkpoint meta of an iteration checkpoint: {"inner_iter": K, "world_size": processes that trained them}.
MID_EPOCH_META_KEY = "mid_epoch"
JSON_LOG_SUFFIX = ".log.json"
# What the batch step of a Slurm job writes of each start and end of the job (a requeued job starts again under
# the same id): slurm-<job id>.job.json, {"job_id", "starts": [{"restart", "time", "nodes", "resume_from",
# "position", "end": {"time", "returncode", "reason"} or absent}]}.
JOB_MARKER_FILE = "slurm-{}.job.json"
# The exit code of ranks that stopped at a checkpoint because the job's time limit is near (the stop signal), and of
# the batch step of such a job: the stage continues in a new job, it did not fail.
STOPPED_FOR_TIME_LIMIT = 75


def resume_candidates(work_dir):
    """Checkpoints with their position (epochs complete, iterations of the next epoch), newest first:
    ``epoch_N.pth`` is (N, 0), ``epoch_E_iter_K.pth`` is (E - 1, K). ``latest.pth`` is only a link to one."""
    found = []
    for name in os.listdir(work_dir) if os.path.isdir(work_dir) else ():
        path = os.path.join(work_dir, name)
        match = EPOCH_PATTERN.match(name)
        if match and os.path.isfile(path):
            found.append(((int(match.group(1)), 0), path))
            continue
        match = ITER_PATTERN.match(name)
        if match and os.path.isfile(path):
            found.append(((int(match.group(1)) - 1, int(match.group(2))), path))
    return sorted(found, reverse=True)


def evaluated(work_dir, epoch):
    """Whether a json log of the stage holds the evaluation (a val record) of ``epoch``."""
    for name in sorted(os.listdir(work_dir)) if os.path.isdir(work_dir) else ():
        if not name.endswith(JSON_LOG_SUFFIX):
            continue
        with open(os.path.join(work_dir, name), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if '"val"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:  # a half-written last line
                    continue
                if record.get("mode") == "val" and record.get("epoch") == epoch:
                    return True
    return False


def final_without_evaluation(work_dir, position, max_epochs, validate):
    """A final checkpoint whose evaluation is not in the logs is no resume point: its job ended (a time limit, a
    crash) between the checkpoint and the evaluation after it; resumed from it, nothing would train and the stage
    would stay unevaluated."""
    return bool(validate) and tuple(position) == (max_epochs, 0) and not evaluated(work_dir, max_epochs)


def read_job_marker(work_dir, job_id):
    """The batch step's record of a job's starts and ends, or None."""
    try:
        with open(os.path.join(work_dir, JOB_MARKER_FILE.format(job_id)), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_job_marker(work_dir, job_id, marker):
    path = os.path.join(work_dir, JOB_MARKER_FILE.format(job_id))
    partial = path + ".part"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(marker, handle)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


# Who trains in a work dir: one holder at a time (a local stage's launching process, a Slurm job's batch step), with
# a heartbeat. {"holder", "token", "host", "boot_id", "pid", "pid_start", "heartbeat"}.
LEASE_FILE = ".uniad_lease.json"
LEASE_TTL_S = 120.0  # a holder on another host whose heartbeat is older than this is gone
LEASE_EVERY_S = 15.0
# How long a new holder waits for a live one to go before it gives up: a retry that Airflow starts while the attempt
# it replaces is still being stopped (its ranks get 10 s to exit, then SIGKILL) must not fail for it.
LEASE_WAIT_S = 60.0


class LeaseHeld(Exception):
    """Another live holder trains in the work dir."""

    def __init__(self, lease, age_s, waited_s=0.0):
        self.lease, self.age_s = lease, age_s
        waited = f" after waiting {waited_s:.0f} s for it to end" if waited_s else ""
        super().__init__(
            "{} already trains in this work dir (host {}, pid {}, heartbeat {:.0f} s ago){}".format(
                lease.get("holder"), lease.get("host"), lease.get("pid"), age_s, waited
            )
        )


def waiting_for(lease, wait_s):
    """What a new holder says while it waits for ``lease``'s live holder to go."""
    return "{} still trains in this work dir (host {}, pid {}): waiting up to {:.0f} s for it to end".format(
        lease.get("holder"), lease.get("host"), lease.get("pid"), wait_s
    )


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return None


def process_start(pid):
    """The start time of process ``pid`` in clock ticks since boot (with the pid, what names it), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else int(fields[19])


def read_lease(work_dir):
    try:
        with open(os.path.join(work_dir, LEASE_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def same_host(record):
    """Whether ``record`` (a lease, a local job's marker) was written on this host and in its process namespace: the
    same boot and host name (containers on one host share the boot id, not their pids)."""
    import socket

    return (
        bool(record.get("boot_id"))
        and record.get("boot_id") == boot_id()
        and record.get("host") == socket.gethostname()
    )


def lease_alive(lease, now, ttl_s=LEASE_TTL_S):
    """Whether the lease's holder may still train: on this host (``same_host``) its process must exist; elsewhere
    its heartbeat must be younger than ``ttl_s``."""
    if same_host(lease):
        return process_start(lease.get("pid")) == lease.get("pid_start")
    return now - float(lease.get("heartbeat") or 0) < ttl_s


class Lease:
    """The work dir's lease for ``holder`` (e.g. ``slurm:1234``, ``local:host:pid``): ``acquire`` waits up to
    ``wait_s`` for another live holder to go (``alive`` says whether it is), then refuses (``LeaseHeld``); a thread
    renews the heartbeat every ``LEASE_EVERY_S`` until ``release``. The same holder may take it over (a Slurm job
    started again after a requeue); each acquisition has a token of its own, so the start it replaced neither renews
    nor removes the new one."""

    def __init__(self, work_dir, holder, alive=None):
        import socket
        import uuid

        self.work_dir, self.holder = work_dir, holder
        self.alive = alive or (lambda lease: lease_alive(lease, time.time()))
        pid = os.getpid()
        self.record = {
            "holder": holder,
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "boot_id": boot_id(),
            "pid": pid,
            "pid_start": process_start(pid),
        }
        self._stop = None

    def acquire(self, wait_s=0.0, on_wait=None):
        """Take the lease; while another live holder has it, wait up to ``wait_s`` (``on_wait(lease)`` is told once)."""
        import threading

        began, told = time.time(), False
        while True:
            held = read_lease(self.work_dir)
            if not held or held.get("holder") == self.holder or not self.alive(held):
                break
            waited = time.time() - began
            if waited >= wait_s:
                raise LeaseHeld(held, time.time() - float(held.get("heartbeat") or 0), waited)
            if on_wait is not None and not told:
                on_wait(held)
                told = True
            time.sleep(min(1.0, wait_s - waited))
        self._write()
        time.sleep(0.2)  # two that found it free at once: the one whose lease stands trains
        if not self._mine():
            raise LeaseHeld(read_lease(self.work_dir) or {}, 0.0)
        self._stop = threading.Event()
        threading.Thread(target=self._renew, name="uniad-lease", daemon=True).start()
        return self

    def _mine(self):
        return (read_lease(self.work_dir) or {}).get("token") == self.record["token"]

    def _renew(self):
        while not self._stop.wait(LEASE_EVERY_S):
            if self._mine():
                self._write()

    def _write(self):
        path = os.path.join(self.work_dir, LEASE_FILE)
        partial = f"{path}.{os.getpid()}.part"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(dict(self.record, heartbeat=time.time()), handle)
        os.replace(partial, path)

    def release(self):
        if self._stop is not None:
            self._stop.set()
        if self._mine():
            try:
                os.remove(os.path.join(self.work_dir, LEASE_FILE))
            except OSError:
                pass
