"""The UniAD root a run trains in: a real checkout (checked), or a mini root written for the run."""

from __future__ import annotations

from pathlib import Path

from ..errors import ParamError
from ..mini.scaffold import STAGE1_CONFIG, STAGE2_CONFIG, init_mini_root, is_mini_root
from ..workdir import pretrained_path
from .allowlist import AllowedRoots
from .params import PipelineParams


def target_root(params: PipelineParams, mini_run_dir: Path | None = None) -> Path:
    """Where the run's root is (or, for the mini profile, will be written: ``mini_run_dir`` without uniad_root)."""
    if params.uniad_root:
        return Path(params.uniad_root)
    if params.profile == "mini" and mini_run_dir is not None:
        return mini_run_dir
    raise ParamError("the mini profile needs uniad_root or a per-run folder to create the mini root in")


def prepare_root(params: PipelineParams, mini_run_dir: Path | None = None, allowed: AllowedRoots | None = None) -> Path:
    """Return the UniAD root to train in; for the mini profile, write one (default: ``mini_run_dir``). With
    ``allowed``, the root is checked before anything is written, and every path the run will touch after."""
    root = target_root(params, mini_run_dir)
    if allowed is not None:
        allowed.check("uniad_root", root)
    if params.profile == "mini":
        root = init_mini_root(root)
    else:
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
    if allowed is not None:
        for name in ("stage1_config", "stage2_config"):
            allowed.check(name, root / getattr(params, name))
        allowed.check("ckpt_path", root / params.ckpt_path)  # an absolute ckpt_path replaces the root
        for uri in params.pretrained_s3_uris:
            allowed.check(f"the download target of {uri}", pretrained_path(root, uri))
    return root
