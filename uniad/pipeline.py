"""The staged pipeline's parameters and the plan every task works from.

``preflight`` validates the trigger parameters once, prepares the UniAD root and writes a plan (plain JSON, kept in
XCom); the training, validation and promotion steps read their stage's settings from that plan, so nothing a user
typed is interpreted twice or reaches a shell.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from .checkpoints import STAGES
from .errors import PipelineError
from .launch import BACKENDS, LAUNCHERS, StageSpec, default_work_dir, parse_cfg_options
from .mini.scaffold import STAGE1_CONFIG, STAGE2_CONFIG, init_mini_root, is_mini_root
from .storage import parse_s3_uri

PROFILES = ("uniad", "mini")
DEFAULT_NPROC = {"uniad": 8, "mini": 2}
DEFAULT_CKPT = "ckpts/full_track_map.pth"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class PipelineParams:
    profile: str = "uniad"
    uniad_root: str | None = None
    stage1_config: str = STAGE1_CONFIG
    stage2_config: str = STAGE2_CONFIG
    stage1_epochs: int = 6
    stage2_epochs: int = 20
    nproc_per_node: int | None = None
    backend: str = "auto"
    launcher: str = "torchrun"
    deterministic: bool = True
    seed: int | None = 0
    stage1_cfg_options: tuple[str, ...] = field(default_factory=tuple)
    stage2_cfg_options: tuple[str, ...] = field(default_factory=tuple)
    ckpt_path: str = DEFAULT_CKPT
    strict: bool = False
    stall_timeout_s: int = 600
    checkpoint_interval_iters: int | None = None
    s3_uri: str | None = None
    aws_conn_id: str = "aws_default"
    pretrained_s3_uris: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise PipelineError(f"profile must be one of {', '.join(PROFILES)}, got {self.profile!r}; e.g. mini")
        if self.profile == "uniad" and not self.uniad_root:
            raise PipelineError(
                "profile 'uniad' needs uniad_root: the path of a UniAD checkout on the GPU workers, "
                'e.g. {"profile": "uniad", "uniad_root": "/workspace/UniAD"}'
            )
        if self.uniad_root is not None and not Path(self.uniad_root).is_absolute():
            raise PipelineError(f"uniad_root must be an absolute path, got {self.uniad_root!r}; e.g. /workspace/UniAD")
        for name in ("stage1_epochs", "stage2_epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise PipelineError(
                    f"{name} must be an integer >= 1, got {value!r}; e.g. 6 for stage 1, 20 for stage 2"
                )
        if self.nproc_per_node is not None and (not _is_int(self.nproc_per_node) or not 1 <= self.nproc_per_node <= 64):
            raise PipelineError(
                f"nproc_per_node must be an integer from 1 to 64 or null (profile default), got {self.nproc_per_node!r}"
            )
        if self.backend not in BACKENDS:
            raise PipelineError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}; e.g. auto")
        if self.launcher not in LAUNCHERS:
            raise PipelineError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}; e.g. torchrun")
        if not isinstance(self.deterministic, bool):
            raise PipelineError(f"deterministic must be true or false, got {self.deterministic!r}")
        if not isinstance(self.strict, bool):
            raise PipelineError(f"strict must be true or false, got {self.strict!r}")
        if not _is_int(self.stall_timeout_s) or self.stall_timeout_s < 30:
            raise PipelineError(
                f"stall_timeout_s must be an integer >= 30, got {self.stall_timeout_s!r}; e.g. 600 (10 minutes)"
            )
        interval = self.checkpoint_interval_iters
        if interval is not None and (not _is_int(interval) or interval < 1):
            raise PipelineError(
                f"checkpoint_interval_iters must be an integer >= 1 or null (once per epoch), got {interval!r}; "
                "e.g. 500"
            )
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise PipelineError(f"seed must be a non-negative integer or null, got {self.seed!r}; e.g. 0")
        for name in ("stage1_config", "stage2_config", "ckpt_path"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or ".." in Path(value).parts:
                raise PipelineError(
                    f"{name} must be a path inside the UniAD root (no '..'), got {value!r}; "
                    f"e.g. {STAGE1_CONFIG if name != 'ckpt_path' else DEFAULT_CKPT}"
                )
        if self.s3_uri is not None:
            parse_s3_uri(self.s3_uri)
        if not isinstance(self.aws_conn_id, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,250}", self.aws_conn_id):
            raise PipelineError(
                f"aws_conn_id must be an Airflow connection id, got {self.aws_conn_id!r}; e.g. aws_default"
            )
        if isinstance(self.pretrained_s3_uris, str) or not all(isinstance(u, str) for u in self.pretrained_s3_uris):
            raise PipelineError(
                f"pretrained_s3_uris must be a list of s3:// object URIs, got {self.pretrained_s3_uris!r}; "
                'e.g. ["s3://my-bucket/pretrained/bevformer_r101_dcn_24ep.pth"]'
            )
        names = [PurePosixPath(parse_s3_uri(u, need_key=True).key).name for u in self.pretrained_s3_uris]
        if len(set(names)) != len(names):
            raise PipelineError(f"pretrained_s3_uris would write the same file in ckpts/ twice: {names}")
        object.__setattr__(self, "pretrained_s3_uris", tuple(self.pretrained_s3_uris))
        for name in ("stage1_cfg_options", "stage2_cfg_options"):
            try:
                object.__setattr__(self, name, parse_cfg_options(getattr(self, name)))
            except PipelineError as exc:
                raise PipelineError(f"{name}: {exc}") from exc

    @classmethod
    def from_mapping(cls, values: dict) -> PipelineParams:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise PipelineError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{key: value for key, value in values.items()})

    @property
    def nproc(self) -> int:
        return self.nproc_per_node if self.nproc_per_node is not None else DEFAULT_NPROC[self.profile]


def sanitize_run_id(run_id: str) -> str:
    """A run id as one safe folder name (manual__2026-11-24T09:00:00+00:00 -> manual__2026-11-24T09_00_00_00_00)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return cleaned[:200]


def prepare_root(params: PipelineParams, mini_run_dir: Path | None = None) -> Path:
    """Return the UniAD root to train in; for the mini profile, write one (default: ``mini_run_dir``)."""
    if params.profile == "mini":
        target = Path(params.uniad_root) if params.uniad_root else mini_run_dir
        if target is None:
            raise PipelineError("the mini profile needs uniad_root or a per-run folder to create the mini root in")
        root = init_mini_root(target)
    else:
        root = Path(params.uniad_root)
        if not (root / "tools" / "train.py").is_file():
            raise PipelineError(
                f"{root} is not a UniAD checkout (no tools/train.py). Point uniad_root at the checkout on the GPU "
                "workers, e.g. /workspace/UniAD, or use profile 'mini' to try the pipeline without one."
            )
        if is_mini_root(root):
            raise PipelineError(f"{root} is a mini UniAD root; trigger it with profile 'mini'")
    for name in ("stage1_config", "stage2_config"):
        config = root / getattr(params, name)
        if not config.is_file():
            raise PipelineError(
                f"{name} {getattr(params, name)!r} not found under {root}; e.g. "
                f"{STAGE1_CONFIG if name == 'stage1_config' else STAGE2_CONFIG}"
            )
    return root


def build_plan(params: PipelineParams, root: Path, python: str) -> dict:
    """The JSON plan: absolute root and checkpoint path, and a StageSpec (as a dict) per stage."""
    root = root.resolve()
    ckpt = Path(params.ckpt_path)
    ckpt = ckpt if ckpt.is_absolute() else root / ckpt
    common = dict(
        uniad_root=str(root),
        nproc_per_node=params.nproc,
        backend=params.backend,
        launcher=params.launcher,
        deterministic=params.deterministic,
        seed=params.seed,
        python=python,
        checkpoint_interval_iters=params.checkpoint_interval_iters,
    )
    stage1 = StageSpec(
        config=params.stage1_config,
        work_dir=default_work_dir(params.stage1_config),
        max_epochs=params.stage1_epochs,
        cfg_options=params.stage1_cfg_options,
        **common,
    )
    stage2 = StageSpec(
        config=params.stage2_config,
        work_dir=default_work_dir(params.stage2_config),
        max_epochs=params.stage2_epochs,
        load_from=str(ckpt),  # explicit: never rely on the config's own load_from pointing at the right file
        cfg_options=params.stage2_cfg_options,
        **common,
    )
    return {
        "profile": params.profile,
        "uniad_root": str(root),
        "ckpt_path": str(ckpt),
        "strict": params.strict,
        "stall_timeout_s": params.stall_timeout_s,
        "s3": {
            "uri": params.s3_uri,
            "aws_conn_id": params.aws_conn_id,
            "pretrained": [
                {"uri": uri, "path": str(root / "ckpts" / PurePosixPath(uri).name)} for uri in params.pretrained_s3_uris
            ],
        },
        "stages": {"stage1": _spec_to_dict(stage1), "stage2": _spec_to_dict(stage2)},
    }


def _spec_to_dict(spec: StageSpec) -> dict:
    data = asdict(spec)
    data["cfg_options"] = list(spec.cfg_options)
    return data


def stage_spec(plan: dict, stage: str) -> StageSpec:
    if stage not in STAGES:
        raise PipelineError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    data = dict(plan["stages"][stage])
    data["cfg_options"] = tuple(data.get("cfg_options") or ())
    return StageSpec(**data)


def later_epochs(plan: dict, stage: str) -> int:
    """Epochs still to train after ``stage`` finishes, for the pipeline-wide ETA."""
    order = list(STAGES)
    return sum(plan["stages"][s]["max_epochs"] for s in order[order.index(stage) + 1 :])


def stage_work_dir(plan: dict, stage: str) -> Path:
    return stage_spec(plan, stage).work_dir_path
