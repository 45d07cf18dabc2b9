"""The file names and checkpoint meta keys of a stage's work dir that the training side writes and the pipeline
reads. Both import this module: the pipeline as ``uniad.trainside.uniad_workdir``, the training processes as
``uniad_workdir`` (this folder is on their PYTHONPATH). Standard library only, valid Python 3.8."""

import re

LATEST = "latest.pth"  # mmcv's CheckpointHook: a symlink to the newest epoch file
EPOCH_FILE = "epoch_{}.pth"
EPOCH_PATTERN = re.compile(r"^epoch_(\d+)\.pth$")
ITER_FILE = "epoch_{}_iter_{}.pth"  # a checkpoint inside epoch E after K of its iterations
ITER_PATTERN = re.compile(r"^epoch_(\d+)_iter_(\d+)\.pth$")
# Checkpoint meta of an iteration checkpoint: {"inner_iter": K, "world_size": processes that trained them}.
MID_EPOCH_META_KEY = "mid_epoch"
