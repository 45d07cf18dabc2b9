"""The trigger parameters: one typed definition, from which the DAG's trigger form is derived.

Each field of ``PipelineParams`` carries its JSON schema (type, bounds, enum, pattern), title, description and an
example. ``form_fields()`` turns them into the DAG's ``Param`` arguments, and ``PipelineParams`` checks values
against the same schema, so the form and the package cannot disagree. Every refusal is a ``ParamError`` whose
message says how to fix it.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ParamError
from ..vocabulary import (
    BACKENDS,
    EXECUTORS,
    ITER_CHECKPOINT_KEYS,
    LAUNCHERS,
    MANAGED_KEYS,
    PROFILES,
    STAGE1_CONFIG,
    STAGE2_CONFIG,
)

DEFAULT_NPROC = {"uniad": 8, "mini": 2}
DEFAULT_CKPT = "ckpts/full_track_map.pth"
CFG_OPTION_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.+$"
S3_PREFIX_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
S3_OBJECT_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+$"
CONN_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,250}$"
METRIC_PATTERN = r"^[A-Za-z0-9_./@-]+$"
REQUIREMENT_PATTERN = r"^\s*[A-Za-z0-9_./@-]+\s*(>=|<=)\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?\s*$"
DEFAULT_PUBLISH = "ckpts/uniad_e2e.pth"
SLURM_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SLURM_TIME_PATTERN = r"^(\d+-)?\d+(:\d{2}){0,2}$"
SLURM_ARG_PATTERN = r"^--[a-z][a-z0-9-]*(=[^\s;|&$`<>\\'\"]+)?$"
# sbatch options the pipeline sets from its own parameters.
SLURM_MANAGED = {
    "nodes": "nnodes",
    "ntasks": "nnodes x nproc_per_node",
    "ntasks-per-node": "nproc_per_node",
    "partition": "slurm_partition",
    "account": "slurm_account",
    "time": "slurm_time_limit",
    "output": "the work dir",
    "error": "the work dir",
    "chdir": "uniad_root",
    "wrap": "the stage's command",
    "job-name": "the stage and run",
    "comment": "the attempt and work dir",
    "dependency": "one job per stage of a run at a time (singleton)",
    "requeue": "requeue-safe jobs (the batch step resumes from the newest checkpoint at each start)",
    "no-requeue": "requeue-safe jobs (the batch step resumes from the newest checkpoint at each start)",
    "open-mode": "one output per job, appended at each start",
    "signal": "the stop signal ahead of the time limit (UNIAD_SLURM_STOP_SIGNAL_LEAD_S)",
    "parsable": "the pipeline",
    "gres": "slurm_gpus_per_node and slurm_gpu_type",
    "gpus-per-node": "slurm_gpus_per_node",
    "gpus": "slurm_gpus_per_node",
    "gpus-per-task": "slurm_gpus_per_node",
    "cpus-per-task": "slurm_cpus_per_task",
    "export": "the pipeline (the job's environment is explicit: no Airflow setting may reach it)",
}
_CFG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def param(schema: dict, title: str, example: str, description: str = "", null_means: str = "") -> dict:
    """Field metadata: the form's JSON schema and texts, and what a fix-it message shows."""
    return {"schema": schema, "title": title, "example": example, "description": description, "null_means": null_means}


def parse_cfg_options(items: Any) -> tuple[str, ...]:
    """Validate mmcv ``--cfg-options`` items (``key=value``); each stays one argv item, never shell text."""
    if items is None:
        return ()
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ParamError(
            f"cfg options must be a list of key=value strings, not {'one string' if isinstance(items, str) else type(items).__name__}: got {items!r}; "
            'e.g. ["data.workers_per_gpu=4", "log_config.interval=10"]'
        )
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ParamError(
                f"cfg option {item!r} is not key=value; e.g. data.workers_per_gpu=4 or log_config.interval=10"
            )
        key, value = item.split("=", 1)
        if not _CFG_KEY.match(key):
            raise ParamError(f"cfg option key {key!r} is not a dotted config path; e.g. data.workers_per_gpu=4")
        if value == "":
            raise ParamError(f"cfg option {item!r} has an empty value; e.g. {key}=4")
        if key in MANAGED_KEYS:
            raise ParamError(
                f"cfg option {key} is set by the pipeline from {MANAGED_KEYS[key]}; "
                "set that parameter instead of passing it in cfg options"
            )
    return tuple(items)


def check_iteration_checkpoints(interval: int | None, cfg_options: tuple[str, ...]) -> None:
    """Iteration checkpoints select their runner through runner.type and custom_imports: no cfg option may too."""
    clashing = [o for o in cfg_options if o.split("=", 1)[0].startswith(ITER_CHECKPOINT_KEYS)]
    if interval is not None and clashing:
        raise ParamError(
            f"cfg options {clashing} clash with checkpoint_interval_iters, which sets runner.type and "
            "custom_imports itself; drop them or leave checkpoint_interval_iters unset"
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _what(schema: dict, null_means: str) -> str:
    """A schema in words: 'an integer from 1 to 64 or null (the profile's default)'."""
    if "enum" in schema:
        text = f"one of {', '.join(schema['enum'])}"
    else:
        kind = next(
            t for t in (schema["type"] if isinstance(schema["type"], list) else [schema["type"]]) if t != "null"
        )
        text = {
            "integer": "an integer",
            "number": "a number",
            "boolean": "true or false",
            "string": "a string",
            "array": "a list",
        }[kind]
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            text += f" from {low} to {high}"
        elif low is not None:
            text += f" >= {low}"
        if "pattern" in schema:
            text += f" matching {schema['pattern']}"
        if "items" in schema:
            text += f" of strings matching {schema['items']['pattern']}"
    if "null" in (schema["type"] if isinstance(schema["type"], list) else []):
        text += f" or null{f' ({null_means})' if null_means else ''}"
    return text


def check_value(name: str, value: Any, meta: dict) -> None:
    """``value`` against the field's schema; a ParamError naming it (``name``), the rule and an example."""
    schema = meta["schema"]
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if value is None and "null" in types:
        return
    ok = {
        "integer": _is_int(value),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, (list, tuple)),
    }[next(t for t in types if t != "null")]
    if ok and "enum" in schema:
        ok = value in schema["enum"]
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = schema.get("minimum", value) <= value <= schema.get("maximum", value)
    if ok and isinstance(value, str) and "pattern" in schema:
        ok = re.search(schema["pattern"], value) is not None
    if ok and isinstance(value, (list, tuple)) and "items" in schema:
        ok = all(isinstance(v, str) and re.search(schema["items"]["pattern"], v) for v in value)
    if not ok:
        raise ParamError(f"{name} must be {_what(schema, meta['null_means'])}, got {value!r}; e.g. {meta['example']}")


@dataclass(frozen=True)
class PipelineParams:
    profile: str = field(
        default="uniad",
        metadata=param(
            {"type": "string", "enum": list(PROFILES)},
            "Profile",
            "mini",
            "uniad: a real UniAD checkout on the GPU workers. mini: the built-in mini UniAD (CPU-friendly).",
        ),
    )
    uniad_root: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"]},
            "UniAD root",
            "/workspace/UniAD",
            "Absolute path of the UniAD checkout on the workers. For mini: where to write the mini root "
            "(empty: a new folder per run).",
            "for mini: a new folder per run",
        ),
    )
    stage1_config: str = field(
        default=STAGE1_CONFIG,
        metadata=param(
            {"type": "string"},
            "Stage 1 config",
            STAGE1_CONFIG,
            "Track + map config, relative to the UniAD root.",
        ),
    )
    stage2_config: str = field(
        default=STAGE2_CONFIG,
        metadata=param(
            {"type": "string"},
            "Stage 2 config",
            STAGE2_CONFIG,
            "End-to-end config, relative to the UniAD root.",
        ),
    )
    stage1_epochs: int = field(
        default=6,
        metadata=param(
            {"type": "integer", "minimum": 1},
            "Stage 1 epochs",
            "6 for stage 1",
            "runner.max_epochs of stage 1 (UniAD: 6).",
        ),
    )
    stage2_epochs: int = field(
        default=20,
        metadata=param(
            {"type": "integer", "minimum": 1},
            "Stage 2 epochs",
            "20 for stage 2",
            "runner.max_epochs of stage 2 (UniAD: 20).",
        ),
    )
    nproc_per_node: int | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "integer"], "minimum": 1, "maximum": 64},
            "Processes per node",
            "8 (one per GPU)",
            "One per GPU. Empty: the profile's default (8 for uniad, 2 for mini).",
            "the profile's default",
        ),
    )
    backend: str = field(
        default="auto",
        metadata=param(
            {"type": "string", "enum": list(BACKENDS)},
            "Distributed backend",
            "auto",
            "auto: nccl when every rank has a usable GPU, else gloo.",
        ),
    )
    launcher: str = field(
        default="torchrun",
        metadata=param(
            {"type": "string", "enum": list(LAUNCHERS)},
            "Launcher",
            "torchrun",
            "torchrun (torch >= 1.10) or python -m torch.distributed.launch --use_env (UniAD main, torch 1.9).",
        ),
    )
    deterministic: bool = field(
        default=True,
        metadata=param(
            {"type": "boolean"},
            "Deterministic",
            "true",
            "Pass --deterministic.",
        ),
    )
    seed: int | None = field(
        default=0,
        metadata=param(
            {"type": ["null", "integer"], "minimum": 0},
            "Seed",
            "0",
            "--seed; empty: none.",
            "no --seed",
        ),
    )
    stage1_cfg_options: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": CFG_OPTION_PATTERN}},
            "Stage 1 cfg options",
            '["data.workers_per_gpu=4", "log_config.interval=10"]',
            "mmcv --cfg-options as key=value items, e.g. data.workers_per_gpu=4, log_config.interval=10.",
        ),
    )
    stage2_cfg_options: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": CFG_OPTION_PATTERN}},
            "Stage 2 cfg options",
            '["data.workers_per_gpu=4"]',
            "mmcv --cfg-options as key=value items, e.g. data.workers_per_gpu=4.",
        ),
    )
    ckpt_path: str = field(
        default=DEFAULT_CKPT,
        metadata=param(
            {"type": "string"},
            "Promoted checkpoint",
            DEFAULT_CKPT,
            "Where the verified stage-1 checkpoint is published; stage 2 loads it (relative to the root).",
        ),
    )
    executor: str = field(
        default="local",
        metadata=param(
            {"type": "string", "enum": list(EXECUTORS)},
            "Executor",
            "slurm",
            "local: the stage runs under its Airflow task on a GPU worker. slurm: a batch job per attempt that Airflow "
            "only follows (the task frees its worker slot), on nnodes nodes.",
        ),
    )
    nnodes: int = field(
        default=1,
        metadata=param(
            {"type": "integer", "minimum": 1, "maximum": 64},
            "Nodes",
            "2",
            "Nodes per stage (executor=slurm); nproc_per_node ranks on each.",
        ),
    )
    slurm_partition: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"], "pattern": SLURM_NAME_PATTERN},
            "Slurm partition",
            "gpu",
            "Empty: UNIAD_SLURM_PARTITION, else the cluster's default partition.",
            "the deployment's default",
        ),
    )
    slurm_account: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"], "pattern": SLURM_NAME_PATTERN},
            "Slurm account",
            "perception",
            "sbatch --account; empty: none.",
            "none",
        ),
    )
    slurm_time_limit: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"], "pattern": SLURM_TIME_PATTERN},
            "Slurm time limit",
            "3-00:00:00",
            "sbatch --time per job (days-hours:minutes:seconds); empty: the partition's.",
            "the partition's",
        ),
    )
    slurm_gpus_per_node: int | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "integer"], "minimum": 0, "maximum": 64},
            "Slurm GPUs per node",
            "8",
            "--gres=gpu:N for each node of the job (executor=slurm). Empty: nproc_per_node for profile uniad (one GPU "
            "per rank, as UniAD's tools/uniad_slurm_train.sh), none for mini.",
            "nproc_per_node for uniad, none for mini",
        ),
    )
    slurm_gpu_type: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"], "pattern": SLURM_NAME_PATTERN},
            "Slurm GPU type",
            "a100",
            "The GPU type where the cluster names them (--gres=gpu:TYPE:N); empty: any.",
            "any type",
        ),
    )
    slurm_max_continuations: int = field(
        default=20,
        metadata=param(
            {"type": "integer", "minimum": 0, "maximum": 1000},
            "Slurm continuations per stage",
            "20",
            "How many times a stage's job that was preempted, lost a node or hit its time limit is continued in a new "
            "job from its newest checkpoint (executor=slurm), apart from the task's retries for crashes.",
        ),
    )
    slurm_cpus_per_task: int | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "integer"], "minimum": 1, "maximum": 256},
            "Slurm CPUs per rank",
            "5",
            "--cpus-per-task on sbatch and srun, for each rank's data loader workers (UniAD's script: 5). Empty: the "
            "partition's CPUs per GPU.",
            "the partition's CPUs per GPU",
        ),
    )
    slurm_extra_args: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": SLURM_ARG_PATTERN}},
            "Extra sbatch options",
            '["--exclusive", "--qos=high"]',
            "More sbatch options, one --key=value per item, e.g. --exclusive, --qos=high, --constraint=a100.",
        ),
    )
    validate: bool = field(
        default=True,
        metadata=param(
            {"type": "boolean"},
            "Evaluate during training",
            "true",
            "Run the configs' evaluation (UniAD: at evaluation.interval, and always after the final epoch). False passes "
            "--no-validate: no metrics, and the gate does not ask for them.",
        ),
    )
    stage1_metric_requirements: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": REQUIREMENT_PATTERN}},
            "Stage 1 metric requirements",
            '["pts_bbox_NuScenes/amota>=0.35", "lanes_iou>=0.28"]',
            "validate_stage1 fails unless the final evaluation meets each, e.g. pts_bbox_NuScenes/amota>=0.35 "
            "(UniAD: 0.390), lanes_iou>=0.28 (UniAD: 0.297).",
        ),
    )
    stage2_metric_requirements: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": REQUIREMENT_PATTERN}},
            "Stage 2 metric requirements",
            '["pts_bbox_NuScenes/amota>=0.33", "planning/L2_avg<=1.1"]',
            "validate_stage2 fails unless the final evaluation meets each, e.g. planning/L2_avg<=1.1 (UniAD: 1.03), "
            "motion/minADE<=0.75 (UniAD: 0.705), occ/iou_n>=60 (UniAD: 63.7).",
        ),
    )
    publish_path: str = field(
        default=DEFAULT_PUBLISH,
        metadata=param(
            {"type": "string"},
            "Published model",
            DEFAULT_PUBLISH,
            "Where the end-to-end model is published when it is not worse than the champion already there "
            "(relative to the root), with its provenance and metrics.",
        ),
    )
    champion_metric: str = field(
        default="pts_bbox_NuScenes/amota",
        metadata=param(
            {"type": "string", "pattern": METRIC_PATTERN},
            "Champion metric",
            "pts_bbox_NuScenes/amota",
            "The metric that decides champion/challenger (errors, distances and collisions: lower is better).",
        ),
    )
    champion_tolerance: float = field(
        default=0.0,
        metadata=param(
            {"type": "number", "minimum": 0},
            "Champion tolerance",
            "0.005",
            "How much worse than the champion a challenger may be and still be published (0: not worse).",
        ),
    )
    strict: bool = field(
        default=False,
        metadata=param(
            {"type": "boolean"},
            "Strict health gate",
            "false",
            "Fail validate_stage1/2 on health warnings (plateau, spikes, lr mismatch), not only on errors.",
        ),
    )
    stall_timeout_s: int = field(
        default=600,
        metadata=param(
            {"type": "integer", "minimum": 30},
            "Stall timeout (s)",
            "600 (10 minutes)",
            "Stop a training stage when neither its log nor its output moved for this long "
            "(and 5x the usual log interval).",
        ),
    )
    checkpoint_interval_iters: int | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "integer"], "minimum": 1},
            "Checkpoint every N iterations",
            "500 (about 70 minutes of UniAD stage 1 on 8 GPUs)",
            "Also checkpoint inside an epoch, so a crash loses at most N iterations and the retry resumes mid-epoch. "
            "Empty: once per epoch (a UniAD stage-1 epoch is ~8 h on 8 GPUs; 500 iterations ~70 min).",
            "once per epoch",
        ),
    )
    s3_uri: str | None = field(
        default=None,
        metadata=param(
            {"type": ["null", "string"], "pattern": S3_PREFIX_PATTERN},
            "S3 artifacts",
            "s3://my-bucket/uniad-runs",
            "Upload checkpoints, logs and reports to <s3_uri>/<run id>/, e.g. s3://my-bucket/uniad-runs.",
            "no upload",
        ),
    )
    aws_conn_id: str = field(
        default="aws_default",
        metadata=param(
            {"type": "string", "pattern": CONN_ID_PATTERN},
            "AWS connection",
            "aws_default",
            "The Airflow connection with the S3 credentials (and endpoint_url for S3-compatible stores).",
        ),
    )
    pretrained_s3_uris: tuple[str, ...] = field(
        default=(),
        metadata=param(
            {"type": "array", "items": {"type": "string", "pattern": S3_OBJECT_PATTERN}},
            "Pretrained weights from S3",
            '["s3://my-bucket/pretrained/bevformer_r101_dcn_24ep.pth"]',
            "Objects fetched into <root>/ckpts/ before stage 1, e.g. s3://my-bucket/pretrained/bevformer_r101_dcn_24ep.pth.",
        ),
    )

    def __post_init__(self) -> None:
        # Imported here: the DAG file builds its form from this module at parse time, and these are not light.
        from ..artifacts.storage import parse_s3_uri
        from ..metrics import parse_requirements

        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_cfg_options"):
                # Before the schema: this says which item is wrong and why (managed keys, empty values).
                try:
                    object.__setattr__(self, f.name, parse_cfg_options(value))
                except ParamError as exc:
                    raise ParamError(f"{f.name}: {exc}") from exc
            check_value(f.name, value, f.metadata)
        if self.profile == "uniad" and not self.uniad_root:
            raise ParamError(
                "profile 'uniad' needs uniad_root: the path of a UniAD checkout on the GPU workers, "
                'e.g. {"profile": "uniad", "uniad_root": "/workspace/UniAD"}'
            )
        if self.uniad_root is not None and not Path(self.uniad_root).is_absolute():
            raise ParamError(f"uniad_root must be an absolute path, got {self.uniad_root!r}; e.g. /workspace/UniAD")
        object.__setattr__(self, "slurm_extra_args", tuple(self.slurm_extra_args))
        for arg in self.slurm_extra_args:
            key = arg[2:].split("=", 1)[0]
            if key in SLURM_MANAGED:
                raise ParamError(
                    f"slurm_extra_args {arg!r}: --{key} is set by the pipeline from {SLURM_MANAGED[key]}; set that "
                    "parameter instead"
                )
        if self.executor == "slurm" and self.profile == "uniad" and self.gpus_per_node == 0:
            raise ParamError(
                "slurm_gpus_per_node=0 but profile uniad needs a GPU per rank (mmcv pins rank r to GPU r % GPUs and "
                "dies without one); leave it empty (one per rank) or set it to nproc_per_node"
            )
        if self.executor == "slurm" and 0 < self.gpus_per_node < self.nproc:
            raise ParamError(
                f"slurm_gpus_per_node={self.gpus_per_node} for nproc_per_node={self.nproc} ranks per node: ranks would "
                f"share GPUs (mmcv puts rank r on GPU r % {self.gpus_per_node}); request one GPU per rank"
            )
        if self.executor == "local" and self.nnodes > 1:
            raise ParamError(
                f"nnodes={self.nnodes} needs executor=slurm: a local stage runs on its worker's node only; e.g. "
                '{"executor": "slurm", "nnodes": 2}'
            )
        for name in ("stage1_metric_requirements", "stage2_metric_requirements"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            parse_requirements(getattr(self, name))
        for name in ("stage1_config", "stage2_config", "ckpt_path", "publish_path"):
            value = getattr(self, name)
            if not value or ".." in Path(value).parts:
                example = getattr(PipelineParams, name)
                raise ParamError(
                    f"{name} must be a path inside the UniAD root (no '..'), got {value!r}; e.g. {example}"
                )
        for name in ("stage1_config", "stage2_config"):
            if not getattr(self, name).endswith(".py"):
                raise ParamError(f"{name} {getattr(self, name)!r} is not a python config; e.g. {STAGE1_CONFIG}")
        if self.s3_uri is not None:
            parse_s3_uri(self.s3_uri)
        names = [PurePosixPath(parse_s3_uri(u, need_key=True).key).name for u in self.pretrained_s3_uris]
        if len(set(names)) != len(names):
            raise ParamError(f"pretrained_s3_uris would write the same file in ckpts/ twice: {names}")
        object.__setattr__(self, "pretrained_s3_uris", tuple(self.pretrained_s3_uris))
        for name in ("stage1_cfg_options", "stage2_cfg_options"):
            check_iteration_checkpoints(self.checkpoint_interval_iters, getattr(self, name))

    @classmethod
    def from_mapping(cls, values: dict) -> PipelineParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ParamError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    @property
    def nproc(self) -> int:
        return self.nproc_per_node if self.nproc_per_node is not None else DEFAULT_NPROC[self.profile]

    @property
    def gpus_per_node(self) -> int:
        """GPUs a Slurm job requests per node: the setting, else one per rank for uniad and none for the mini."""
        if self.slurm_gpus_per_node is not None:
            return self.slurm_gpus_per_node
        return self.nproc if self.profile == "uniad" else 0


def check_field(field_name: str, value: Any, label: str | None = None) -> None:
    """One setting against a parameter's schema, for boundaries that take single settings (the CLI's train);
    ``label`` is what the message calls it there, e.g. --nproc-per-node."""
    check_value(label or field_name, value, PipelineParams.__dataclass_fields__[field_name].metadata)


def form_fields(default_root: str | None = None) -> dict[str, tuple[Any, dict]]:
    """name -> (default, keyword arguments of ``airflow.sdk.Param``) for the DAG's trigger form. With a deployment
    ``default_root`` the form starts on profile uniad at that root; without one, on the mini profile."""
    form = {}
    for f in fields(PipelineParams):
        default = f.default if f.default is not MISSING else None
        if isinstance(default, tuple):
            default = list(default)
        meta = f.metadata
        kwargs = {**meta["schema"], "title": meta["title"]}
        if meta["description"]:
            kwargs["description"] = meta["description"]
        form[f.name] = (default, kwargs)
    form["profile"] = ("uniad" if default_root else "mini", form["profile"][1])
    form["uniad_root"] = (default_root, form["uniad_root"][1])
    return form
