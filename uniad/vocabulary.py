"""The words the trigger parameters are made of, in a leaf that imports nothing: the DAG file builds its trigger
form from the parameters at parse time, so they must not pull in launching, storage or metrics code."""

PROFILES = ("uniad", "mini")
BACKENDS = ("auto", "nccl", "gloo")
LAUNCHERS = ("torchrun", "launch")
EXECUTORS = ("local", "slurm")
# The form's default stage configs: the DL4AGX fork's (and the reference run's) names; the mini root has them too.
# Upstream UniAD has base_*.py instead (uniad.run.root.UPSTREAM_CONFIGS).
STAGE1_CONFIG = "projects/configs/stage1_track_map/full_track_map.py"
STAGE2_CONFIG = "projects/configs/stage2_e2e/full_e2e.py"
# Config keys the pipeline sets from its own parameters; a user cfg-option for them would silently fight it.
MANAGED_KEYS = {
    "dist_params.backend": "backend",
    "runner.max_epochs": "stage1_epochs / stage2_epochs",
    "total_epochs": "stage1_epochs / stage2_epochs",
    "load_from": "the promoted checkpoint (ckpt_path)",
    "runner.checkpoint_interval_iters": "checkpoint_interval_iters",
    "evaluation.interval": "stage1_epochs / stage2_epochs (the final epoch is always evaluated; validate=false: none)",
}
# The config keys that select the mid-epoch checkpoint runner (checkpoint_interval_iters).
ITER_CHECKPOINT_KEYS = ("runner.type", "custom_imports")
