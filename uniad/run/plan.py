"""The plan of one pipeline run: what ``preflight`` decided, typed, and the only code that knows its JSON shape.

``preflight`` validates the trigger parameters once, prepares the UniAD root and returns ``Plan.to_json()``;
every later task receives it as an argument (``plan=preflight.output``) and reads it back with ``Plan.from_json``.
Nothing a user typed is interpreted twice or reaches a shell.

    Plan
      profile, uniad_root, ckpt_path
      stages: {"stage1": StageSpec, "stage2": StageSpec}      how each stage is launched (uniad.train.launch)
      gate: GatePlan(strict, stall_timeout_s, requirements)    how the stages are judged
      storage: StoragePlan(uri, aws_conn_id, pretrained)       S3 uploads and pretrained downloads
      publish: PublishPlan(path, metric, tolerance)            champion/challenger of the end-to-end model
      slurm: SlurmSettings(nnodes, partition, ...) or None     executor=slurm: each attempt a batch job

What depends on the worker that launches an attempt (the training interpreter, its GPUs, the backend) is not in the
plan: that worker resolves it at each attempt (``StageSpec.python`` is None here).
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import ParamError
from ..metrics import REFERENCES, Requirement, parse_requirements
from ..stages import STAGES
from ..train.launch import SlurmSettings, StageSpec, final_epoch_evaluation_interval
from ..workdir import WorkDir, default_work_dir, pretrained_path, provenance_path
from .allowlist import AllowedRoots
from .configs import ConfigFacts, read_configs
from .params import PipelineParams
from .root import check_data, check_load_from, check_paths, choose_configs, prepare_root

PLAN_VERSION = 2


def git_commit(root: Path) -> str:
    """The commit the UniAD checkout is at (``+dirty`` with local changes), or why there is none."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "not a git checkout"
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def stage_spec(root: Path, facts: ConfigFacts, *, epochs: int, work_dir: str | None = None, **launch) -> StageSpec:
    """One stage's launch settings, for the DAG's plan and the CLI alike: what its config says (``facts``: the final
    epoch evaluated, the data files the worker that trains checks again) and ``launch``, more of StageSpec's fields.
    The work dir is UniAD's for the config unless given."""
    return StageSpec(
        uniad_root=str(root),
        config=facts.config,
        work_dir=work_dir or default_work_dir(facts.config),
        max_epochs=epochs,
        evaluation_interval=final_epoch_evaluation_interval(facts.evaluation_interval, epochs),
        data_files=tuple(str(root / path) for _, path in facts.data_files),
        **launch,
    )


@dataclass(frozen=True)
class GatePlan:
    strict: bool = False  # warnings fail the gate too
    stall_timeout_s: int = 600  # the live health watch's stall limit
    # Per stage: "METRIC>=VALUE" / "METRIC<=VALUE" on its final evaluation (uniad.health.metrics.Requirement).
    requirements: dict[str, tuple[str, ...]] = field(default_factory=dict)
    references: bool = False  # show UniAD's published metrics beside the run's (profile uniad)


@dataclass(frozen=True)
class PublishPlan:
    path: str  # absolute: where the end-to-end model is published (the champion lives there)
    metric: str = "pts_bbox_NuScenes/amota"  # decides champion/challenger
    tolerance: float = 0.0  # how much worse a challenger may be and still be published


@dataclass(frozen=True)
class PretrainedFile:
    uri: str
    path: str  # where it lands: <root>/ckpts/<name>


@dataclass(frozen=True)
class StoragePlan:
    uri: str | None = None  # s3://bucket/prefix for the run's artifacts; None: no upload
    aws_conn_id: str = "aws_default"
    pretrained: tuple[PretrainedFile, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Plan:
    profile: str
    uniad_root: str
    ckpt_path: str  # absolute: where stage 1's verified checkpoint is published, and stage 2 loads it from
    stages: dict[str, StageSpec]
    gate: GatePlan = field(default_factory=GatePlan)
    storage: StoragePlan = field(default_factory=StoragePlan)
    publish: PublishPlan | None = None
    slurm: SlurmSettings | None = None  # executor=slurm: how each stage's jobs are submitted

    @classmethod
    def build(cls, params: PipelineParams, root: Path, facts: Mapping[str, ConfigFacts]) -> Plan:
        """The plan for a prepared root: absolute paths, each stage's launch settings from the params and what its
        config says (``facts``, per stage: ``uniad.run.configs``)."""
        root = root.resolve()
        ckpt = root / params.ckpt_path  # an absolute ckpt_path stays as it is
        common = dict(
            nproc_per_node=params.nproc,
            backend=params.backend,
            launcher=params.launcher,
            deterministic=params.deterministic,
            seed=params.seed,
            needs_gpus=params.profile == "uniad",
            checkpoint_interval_iters=params.checkpoint_interval_iters,
            validate=params.validate,
        )
        stage1 = stage_spec(
            root, facts["stage1"], epochs=params.stage1_epochs, cfg_options=params.stage1_cfg_options, **common
        )
        # load_from explicit: never rely on the config's own load_from pointing at the promoted file.
        stage2 = stage_spec(
            root,
            facts["stage2"],
            epochs=params.stage2_epochs,
            cfg_options=params.stage2_cfg_options,
            load_from=str(ckpt),
            **common,
        )
        pretrained = tuple(PretrainedFile(uri, str(pretrained_path(root, uri))) for uri in params.pretrained_s3_uris)
        return cls(
            profile=params.profile,
            uniad_root=str(root),
            ckpt_path=str(ckpt),
            stages={"stage1": stage1, "stage2": stage2},
            gate=GatePlan(
                strict=params.strict,
                stall_timeout_s=params.stall_timeout_s,
                requirements={"stage1": params.stage1_metric_requirements, "stage2": params.stage2_metric_requirements},
                references=params.profile == "uniad",
            ),
            storage=StoragePlan(uri=params.s3_uri, aws_conn_id=params.aws_conn_id, pretrained=pretrained),
            publish=PublishPlan(
                path=str(root / params.publish_path), metric=params.champion_metric, tolerance=params.champion_tolerance
            ),
            slurm=SlurmSettings(
                nnodes=params.nnodes,
                partition=params.slurm_partition,
                account=params.slurm_account,
                time_limit=params.slurm_time_limit,
                extra_args=params.slurm_extra_args,
                gpus_per_node=params.gpus_per_node,
                gpu_type=params.slurm_gpu_type,
                cpus_per_task=params.slurm_cpus_per_task,
                max_continuations=params.slurm_max_continuations,
            )
            if params.executor == "slurm"
            else None,
        )

    # ------------------------------------------------------------------ per stage
    def stage(self, name: str) -> StageSpec:
        if name not in STAGES:
            raise ParamError(f"stage must be one of {', '.join(STAGES)}, got {name!r}")
        return self.stages[name]

    def work_dir(self, stage: str) -> WorkDir:
        return WorkDir(self.stage(stage).work_dir_path)

    def requirements(self, stage: str) -> tuple[Requirement, ...]:
        """The gate's metric requirements on ``stage``'s final evaluation."""
        return parse_requirements(self.gate.requirements.get(stage, ()))

    def references(self, stage: str) -> dict[str, float] | None:
        """UniAD's published metrics for ``stage``, shown beside the run's (profile uniad only)."""
        return REFERENCES.get(stage) if self.gate.references else None

    def later_epochs(self, stage: str) -> int:
        """Epochs still to train after ``stage`` finishes, for the pipeline-wide ETA."""
        return sum(self.stages[s].max_epochs for s in STAGES[STAGES.index(stage) + 1 :])

    def artifacts(self, stage: str) -> list[tuple[Path, str]]:
        """(local file, key below the run's prefix) of what a finished stage leaves: its logs and health report; for
        stage 1 the promoted checkpoint and its provenance (the same bytes as its last epoch, uploaded once), for
        stage 2 its final checkpoint (the file ``latest.pth`` points to)."""
        work_dir = self.work_dir(stage)
        root = Path(self.uniad_root)
        files: list[tuple[Path, str]] = []
        if stage == "stage1":
            promoted = Path(self.ckpt_path)
            for path in (promoted, provenance_path(promoted)):
                files.append((path, path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name))
        elif (final := work_dir.latest_checkpoint()) is not None:
            files.append((final, f"{stage}/{final.name}"))
        files += [(path, f"{stage}/{name}") for path, name in work_dir.stage_outputs()]
        return [(path, key) for path, key in files if path.is_file()]

    def tracking_params(self, stage: str) -> dict[str, str]:
        """What experiment tracking records of ``stage``: its config and the hash of its text, epochs, world size,
        nodes, executor, cfg options, seed, and the UniAD root's git commit."""
        spec = self.stage(stage)
        root = Path(self.uniad_root)
        config = root / spec.config
        nnodes = self.slurm.nnodes if self.slurm is not None else 1
        return {
            "profile": self.profile,
            "config": spec.config,
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else "missing",
            "epochs": str(spec.max_epochs),
            "world_size": str(nnodes * spec.nproc_per_node),
            "nnodes": str(nnodes),
            "nproc_per_node": str(spec.nproc_per_node),
            "executor": "slurm" if self.slurm is not None else "local",
            "cfg_options": " ".join(spec.cfg_options),
            "seed": str(spec.seed),
            "load_from": str(spec.load_from),
            "uniad_commit": git_commit(root),
        }

    # ------------------------------------------------------------------ JSON (XCom)
    def to_json(self) -> dict:
        data = asdict(self)
        data["version"] = PLAN_VERSION
        for spec in data["stages"].values():
            spec["cfg_options"] = list(spec["cfg_options"])
            spec["data_files"] = list(spec["data_files"])
        data["storage"]["pretrained"] = list(data["storage"]["pretrained"])
        data["gate"]["requirements"] = {k: list(v) for k, v in data["gate"]["requirements"].items()}
        if data["slurm"] is not None:
            data["slurm"]["extra_args"] = list(data["slurm"]["extra_args"])
        return data

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            found = data.get("version") if isinstance(data, dict) else type(data).__name__
            raise ParamError(
                f"not a version-{PLAN_VERSION} plan (got {found!r}): the run was planned by another version of the "
                "pipeline; trigger a new run"
            )
        stages = {}
        for name, spec in data["stages"].items():
            stages[name] = StageSpec(
                **{**spec, "cfg_options": tuple(spec["cfg_options"]), "data_files": tuple(spec["data_files"])}
            )
        storage = data["storage"]
        return cls(
            profile=data["profile"],
            uniad_root=data["uniad_root"],
            ckpt_path=data["ckpt_path"],
            stages=stages,
            gate=GatePlan(
                **{**data["gate"], "requirements": {k: tuple(v) for k, v in data["gate"]["requirements"].items()}}
            ),
            storage=StoragePlan(
                uri=storage["uri"],
                aws_conn_id=storage["aws_conn_id"],
                pretrained=tuple(PretrainedFile(**item) for item in storage["pretrained"]),
            ),
            publish=PublishPlan(**data["publish"]) if data.get("publish") else None,
            slurm=SlurmSettings(**{**data["slurm"], "extra_args": tuple(data["slurm"]["extra_args"])})
            if data.get("slurm")
            else None,
        )


def prepare(
    params: PipelineParams, *, python: str, mini_run_dir: Path | None = None, allowed: AllowedRoots | None = None
) -> tuple[Plan, list[str]]:
    """Preflight, before any GPU is taken: the root (a mini one written), the stage configs (UniAD's upstream ones
    where the defaults are absent), every path against the allowed roots, what the configs say read by mmcv's
    Config in ``python``, the data they name, stage 1's ``load_from``. Returns the plan and notes to log."""
    root = prepare_root(params, mini_run_dir=mini_run_dir, allowed=allowed)
    params, notes = choose_configs(params, root)
    if allowed is not None:
        check_paths(params, root, allowed)
    stage1, stage2 = read_configs(
        python,
        root,
        [(params.stage1_config, params.stage1_cfg_options), (params.stage2_config, params.stage2_cfg_options)],
    )
    for facts in (stage1, stage2):
        check_data(root, facts)
    check_load_from(root, stage1, {pretrained_path(root, uri) for uri in params.pretrained_s3_uris})
    return Plan.build(params, root, {"stage1": stage1, "stage2": stage2}), notes
