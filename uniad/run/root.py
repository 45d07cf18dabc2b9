"""The UniAD root a run trains in: a real checkout (checked), or a mini root written for the run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import ParamError
from ..mini.scaffold import init_mini_root, is_mini_root
from ..workdir import pretrained_path
from .allowlist import AllowedRoots
from .configs import DATA_PREP, ConfigFacts
from .params import PipelineParams


def target_root(params: PipelineParams, mini_run_dir: Path | None = None) -> Path:
    """Where the run's root is (or, for the mini profile, will be written: ``mini_run_dir`` without uniad_root)."""
    if params.uniad_root:
        return Path(params.uniad_root)
    if params.profile == "mini" and mini_run_dir is not None:
        return mini_run_dir
    raise ParamError("the mini profile needs uniad_root or a per-run folder to create the mini root in")


# UniAD's own stage configs. The form's defaults (full_track_map.py, full_e2e.py) are the names of the DL4AGX fork
# and of the reference run; an upstream checkout has only these.
UPSTREAM_CONFIGS = {
    "stage1_config": "projects/configs/stage1_track_map/base_track_map.py",
    "stage2_config": "projects/configs/stage2_e2e/base_e2e.py",
}


def prepare_root(params: PipelineParams, mini_run_dir: Path | None = None, allowed: AllowedRoots | None = None) -> Path:
    """Return the UniAD root to train in; for the mini profile, write one (default: ``mini_run_dir``). With
    ``allowed``, the root is checked before anything is written."""
    root = target_root(params, mini_run_dir)
    if allowed is not None:
        allowed.check("uniad_root", root)
    if params.profile == "mini":
        return init_mini_root(root)
    if not (root / "tools" / "train.py").is_file():
        raise ParamError(
            f"{root} is not a UniAD checkout (no tools/train.py). Point uniad_root at the checkout on the GPU "
            "workers, e.g. /workspace/UniAD, or use profile 'mini' to try the pipeline without one."
        )
    if is_mini_root(root):
        raise ParamError(f"{root} is a mini UniAD root; trigger it with profile 'mini'")
    return root


def choose_configs(params: PipelineParams, root: Path) -> tuple[PipelineParams, list[str]]:
    """The stage configs to train: the params' own, or UniAD's upstream ``base_*.py`` where the params name the
    form's defaults and the checkout has only the upstream ones. Returns the params and what was chosen, to say."""
    notes = []
    for name, upstream in UPSTREAM_CONFIGS.items():
        chosen = getattr(params, name)
        default = PipelineParams.__dataclass_fields__[name].default
        if (
            params.profile == "uniad"
            and chosen == default
            and not (root / chosen).is_file()
            and (root / upstream).is_file()
        ):
            params = replace(params, **{name: upstream})
            notes.append(f"{name}: {default} is not in {root}, using UniAD's upstream {upstream}")
    for name in UPSTREAM_CONFIGS:
        config = root / getattr(params, name)
        if not config.is_file():
            present = (
                sorted(p.relative_to(root).as_posix() for p in config.parent.glob("*.py"))
                if config.parent.is_dir()
                else []
            )
            found = f"; configs there: {', '.join(present)}" if present else f"; {config.parent} does not exist either"
            raise ParamError(f"{name} {getattr(params, name)!r} not found under {root}{found}")
    return params, notes


def check_paths(params: PipelineParams, root: Path, allowed: AllowedRoots) -> None:
    """Every path the run will touch lies inside the deployment's allowed roots."""
    for name in ("stage1_config", "stage2_config"):
        allowed.check(name, root / getattr(params, name))
    allowed.check("ckpt_path", root / params.ckpt_path)  # an absolute ckpt_path replaces the root
    allowed.check("publish_path", root / params.publish_path)
    for uri in params.pretrained_s3_uris:
        allowed.check(f"the download target of {uri}", pretrained_path(root, uri))


def check_data(root: Path, facts: ConfigFacts) -> None:
    """The data files and folders a stage config names are there, before a GPU is taken: UniAD would fail on a
    missing info file only after its job waited in the queue and every rank started building its datasets."""
    missing = facts.missing_data(root)
    if missing:
        raise ParamError(f"{facts.config} needs data that is not under {root}: {', '.join(missing)}. {DATA_PREP}")


def check_load_from(root: Path, facts: ConfigFacts, fetched: set[Path]) -> Path | None:
    """The pretrained weights a stage config starts from (``load_from`` after inheritance and cfg options, e.g.
    UniAD stage 1's ``ckpts/bevformer_r101_dcn_24ep.pth``) must exist and load with ``weights_only`` before GPUs
    are taken: mmcv would only fail on it after every rank built its datasets. Skipped for a file this run fetches
    from S3 first."""
    if not facts.load_from:
        return None
    path = (root / facts.load_from).resolve()
    if path in {p.resolve() for p in fetched}:
        return path
    if not path.is_file():
        raise ParamError(
            f"{facts.config} starts from load_from={facts.load_from!r}, which is not at {path}: put the pretrained "
            'weights there, or fetch them with pretrained_s3_uris, e.g. ["s3://my-bucket/pretrained/'
            f'{path.name}"]'
        )
    from ..artifacts.checkpoints import inspect_checkpoint

    report = inspect_checkpoint(path, sha256=False)
    if not report.valid:
        raise ParamError(f"{facts.config}'s load_from {path} is not usable: " + "; ".join(report.problems))
    return path
