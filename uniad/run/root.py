"""The UniAD root a run trains in: a real checkout (checked), or a mini root written for the run."""

from __future__ import annotations

from pathlib import Path

from ..errors import ParamError
from ..mini.scaffold import STAGE1_CONFIG, STAGE2_CONFIG, init_mini_root, is_mini_root
from .params import PipelineParams


def prepare_root(params: PipelineParams, mini_run_dir: Path | None = None) -> Path:
    """Return the UniAD root to train in; for the mini profile, write one (default: ``mini_run_dir``)."""
    if params.profile == "mini":
        target = Path(params.uniad_root) if params.uniad_root else mini_run_dir
        if target is None:
            raise ParamError("the mini profile needs uniad_root or a per-run folder to create the mini root in")
        root = init_mini_root(target)
    else:
        root = Path(params.uniad_root)
        if not (root / "tools" / "train.py").is_file():
            raise ParamError(
                f"{root} is not a UniAD checkout (no tools/train.py). Point uniad_root at the checkout on the GPU "
                "workers, e.g. /workspace/UniAD, or use profile 'mini' to try the pipeline without one."
            )
        if is_mini_root(root):
            raise ParamError(f"{root} is a mini UniAD root; trigger it with profile 'mini'")
    for name in ("stage1_config", "stage2_config"):
        config = root / getattr(params, name)
        if not config.is_file():
            raise ParamError(
                f"{name} {getattr(params, name)!r} not found under {root}; e.g. "
                f"{STAGE1_CONFIG if name == 'stage1_config' else STAGE2_CONFIG}"
            )
    return root
