"""The UniAD root a run trains in: a real checkout (checked), or a mini root written for the run."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ParamError
from ..mini.scaffold import init_mini_root, is_mini_root
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
            # Upstream UniAD has base_track_map.py / base_e2e.py; full_*.py exist only in forks (DL4AGX).
            present = (
                sorted(p.relative_to(root).as_posix() for p in config.parent.glob("*.py"))
                if config.parent.is_dir()
                else []
            )
            found = f"; configs there: {', '.join(present)}" if present else f"; {config.parent} does not exist either"
            raise ParamError(f"{name} {getattr(params, name)!r} not found under {root}{found}")
    if allowed is not None:
        for name in ("stage1_config", "stage2_config"):
            allowed.check(name, root / getattr(params, name))
        allowed.check("ckpt_path", root / params.ckpt_path)  # an absolute ckpt_path replaces the root
        allowed.check("publish_path", root / params.publish_path)
        for uri in params.pretrained_s3_uris:
            allowed.check(f"the download target of {uri}", pretrained_path(root, uri))
    fetched = {pretrained_path(root, uri) for uri in params.pretrained_s3_uris}
    check_load_from(root, params.stage1_config, fetched)
    return root


_LOAD_FROM = re.compile(r"""^load_from\s*=\s*['"]([^'"]+)['"]""", re.M)


def check_load_from(root: Path, config: str, fetched: set[Path]) -> Path | None:
    """The pretrained weights a stage config starts from (``load_from``, e.g. UniAD stage 1's
    ``ckpts/bevformer_r101_dcn_24ep.pth``) must exist and load with ``weights_only`` before GPUs are taken: mmcv
    would only fail on it after every rank built its datasets. Skipped for a file this run fetches from S3 first."""
    match = _LOAD_FROM.search((root / config).read_text(errors="replace"))
    if match is None:
        return None
    path = (root / match.group(1)).resolve()
    if path in {p.resolve() for p in fetched}:
        return path
    if not path.is_file():
        raise ParamError(
            f"{config} starts from load_from={match.group(1)!r}, which is not at {path}: put the pretrained weights "
            'there, or fetch them with pretrained_s3_uris, e.g. ["s3://my-bucket/pretrained/'
            f'{path.name}"]'
        )
    from ..artifacts.checkpoints import inspect_checkpoint

    report = inspect_checkpoint(path, sha256=False)
    if not report.valid:
        raise ParamError(f"{config}'s load_from {path} is not usable: " + "; ".join(report.problems))
    return path
