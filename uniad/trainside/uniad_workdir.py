"""The file names and checkpoint meta keys of a stage's work dir that the training side writes and the pipeline
reads, and the few rules both sides apply to them. Both import this module: the pipeline as
``uniad.trainside.uniad_workdir``, the training processes and the Slurm batch step as ``uniad_workdir`` (this folder
is on their PYTHONPATH). Standard library only, valid Python 3.8."""

import json
import os
import re

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
