"""Build the command that trains one UniAD stage: pure functions, argv lists, no shell.

What a stage launch looks like (the reference run's stage 2, made explicit)::

    PYTHONPATH=<root>:$PYTHONPATH PYTHONUNBUFFERED=1 \\
    python -m torch.distributed.run --nnodes=1 --nproc_per_node=8 --master_addr=127.0.0.1 --master_port=28599 \\
        tools/train.py projects/configs/stage2_e2e/full_e2e.py --launcher pytorch --deterministic \\
        --work-dir projects/work_dirs/stage2_e2e/full_e2e/ \\
        --cfg-options dist_params.backend=gloo total_epochs=20 runner.max_epochs=20 \\
        load_from=<root>/ckpts/full_track_map.pth \\
        data.workers_per_gpu=4 log_config.interval=10

``--launcher pytorch`` is always passed: UniAD v2.0's scripts drop it and every rank lands on GPU 0 (issue #229).
The ``launch`` launcher adds ``--use_env`` so ranks read LOCAL_RANK from the environment on every torch version.
"""

from __future__ import annotations

import shlex
import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import LaunchError
from ..vocabulary import BACKENDS

# The modules that run in the training interpreter (uniad/trainside): shipped into each work dir before a launch,
# since UniAD's interpreter does not have this package installed and a compute node may not see its install.
TRAINSIDE_DIR = Path(__file__).resolve().parents[1] / "trainside"
TRAINSIDE_MODULES = ("uniad_workdir.py", "uniad_iter_checkpoint.py", "uniad_slurm_job.py", "uniad_config_facts.py")
ITER_CHECKPOINT_MODULE = "uniad_iter_checkpoint"
ITER_CHECKPOINT_RUNNER = "IterCheckpointEpochBasedRunner"
STOP_SIGNAL = "USR2"  # what uniad_slurm_job.py passes on to the ranks ahead of a time limit


@dataclass(frozen=True)
class StageSpec:
    """Everything that decides how one stage is launched. Paths are relative to the UniAD root or absolute.

    Built from validated input only (``uniad.run.params`` for the DAG and the CLI): it does not check again."""

    uniad_root: str
    config: str
    work_dir: str
    max_epochs: int
    nproc_per_node: int
    backend: str = "auto"
    launcher: str = "torchrun"
    deterministic: bool = True
    seed: int | None = None
    load_from: str | None = None
    resume_from: str | None = None
    cfg_options: tuple[str, ...] = field(default_factory=tuple)
    # The training interpreter (UNIAD_PYTHON) of the worker that launches an attempt: resolved there at each
    # attempt, never at planning time, since preflight runs on another worker. None in a plan.
    python: str | None = None
    # Profile uniad: ranks need a GPU each (mmcv's init pins rank r to GPU r % device_count, ZeroDivisionError with
    # none), so a worker or partition without GPUs is refused before launch.
    needs_gpus: bool = False
    # Absolute paths of the data files the config names, checked again by the worker that launches an attempt.
    data_files: tuple[str, ...] = field(default_factory=tuple)
    # Also checkpoint every N iterations inside an epoch (trainside/uniad_iter_checkpoint.py); None: per epoch only.
    checkpoint_interval_iters: int | None = None
    # False: --no-validate (no evaluation during training, on purpose). evaluation_interval: set when the config's
    # own interval would skip the final epoch (final_epoch_evaluation_interval).
    validate: bool = True
    evaluation_interval: int | None = None
    # A Slurm job with a time limit: the signal (e.g. USR2) on which the ranks checkpoint and stop ahead of it.
    stop_signal: str | None = None

    @property
    def work_dir_path(self) -> Path:
        """The work dir as an absolute path; a relative one lies under the UniAD root, where train.py runs."""
        work_dir = Path(self.work_dir)
        return work_dir if work_dir.is_absolute() else Path(self.uniad_root) / work_dir


@dataclass(frozen=True)
class LaunchCommand:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    backend: str


def final_epoch_evaluation_interval(interval: int | None, max_epochs: int) -> int | None:
    """The ``evaluation.interval`` that makes mmcv's eval hook run after the final epoch, given the config's own
    (``interval``, after inheritance and cfg options; None: the config does not evaluate), or None when the config's
    one already does. UniAD's configs evaluate every 6 (stage 1) or 4 (stage 2) epochs: with 5 epochs the last one
    would never be evaluated. Then only the final epoch is: intermediate evaluations of a real UniAD stage cost hours
    each, and the gate judges the final one."""
    if interval is None:
        return None
    return None if interval > 0 and max_epochs % interval == 0 else max_epochs


def ship_trainside(target: Path) -> Path:
    """Copy the trainside modules into ``target`` (a folder of the work dir, on the filesystem the GPU workers and
    compute nodes share) and return it: what the ranks and the batch step import from, in UniAD's interpreter."""
    target.mkdir(parents=True, exist_ok=True)
    for name in TRAINSIDE_MODULES:
        partial = target / f".{name}.part"
        shutil.copyfile(TRAINSIDE_DIR / name, partial)
        partial.replace(target / name)  # a job reading the previous copy never sees half a file
    return target


def resolve_backend(
    requested: str, visible_gpus: int, nproc_per_node: int, nccl_error: str | None = None
) -> tuple[str, str]:
    """The backend to train with, and why. ``auto``: nccl when every rank has a GPU and NCCL's probe all-reduce
    worked (``nccl_error`` is None), else gloo. An explicit nccl that cannot work is an error suggesting gloo.
    A worker with some GPUs but fewer than the ranks is an error whatever the backend (CPU-only workers run gloo)."""
    if requested not in BACKENDS:
        raise LaunchError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if 0 < visible_gpus < nproc_per_node:
        raise LaunchError(
            f"nproc_per_node={nproc_per_node} but the training interpreter on this worker sees {visible_gpus} GPU(s): "
            f"ranks would share GPUs (mmcv puts rank r on GPU r % {visible_gpus}) and run out of memory with any "
            f"backend. Set nproc_per_node={visible_gpus}, or check CUDA_VISIBLE_DEVICES and the worker's GPU slots "
            "(UNIAD_GPUS_PER_WORKER)."
        )
    if requested == "gloo":
        return "gloo", "requested gloo"
    enough = visible_gpus >= nproc_per_node
    if requested == "auto":
        if not enough:
            return "gloo", f"auto: {visible_gpus} usable GPU(s) for {nproc_per_node} process(es)"
        if nccl_error is not None:
            return "gloo", f"auto: NCCL failed its probe all-reduce, falling back to gloo ({nccl_error})"
        return "nccl", f"auto: {visible_gpus} GPU(s), NCCL probe all-reduce passed"
    if not enough:
        raise LaunchError(
            f"backend nccl needs one GPU per process: {nproc_per_node} processes but {visible_gpus} usable GPU(s) "
            "on this worker. Use backend=gloo (or auto), or lower nproc_per_node."
        )
    if nccl_error is not None:
        raise LaunchError(
            f"backend nccl failed to initialise on this worker ({nccl_error}). Use backend=gloo, as the reference "
            "run did, or backend=auto to fall back automatically."
        )
    return "nccl", "requested nccl, probe all-reduce passed"


def _distributed(python: str | None, launcher: str, nproc_per_node: int, backend: str, master_port: int) -> list[str]:
    """The launcher's part of an argv: one node, ``nproc_per_node`` ranks, rendezvous on loopback."""
    _check_python(python)
    if backend not in ("nccl", "gloo"):
        raise LaunchError(f"a launch needs a resolved backend (nccl or gloo), got {backend!r}")
    if not 1024 <= master_port <= 65535:
        raise LaunchError(f"master_port must be in 1024..65535, got {master_port}")
    if launcher == "torchrun":
        module: Sequence[str] = ("-m", "torch.distributed.run", "--nnodes=1")
    else:
        module = ("-m", "torch.distributed.launch", "--use_env")
    return [
        python,
        *module,
        f"--nproc_per_node={nproc_per_node}",
        "--master_addr=127.0.0.1",
        f"--master_port={master_port}",
    ]


def build_eval_launch(
    *,
    uniad_root: str,
    config: str,
    checkpoint: str,
    nproc_per_node: int,
    backend: str,
    master_port: int,
    launcher: str = "torchrun",
    python: str = "python",
    cfg_options: Sequence[str] = (),
    base_env: Mapping[str, str] | None = None,
) -> LaunchCommand:
    """``tools/test.py CONFIG CKPT --launcher pytorch --eval bbox`` as UniAD's tools/uniad_dist_eval.sh runs it."""
    argv = [
        *_distributed(python, launcher, nproc_per_node, backend, master_port),
        "tools/test.py",
        config,
        checkpoint,
        "--launcher",
        "pytorch",
        "--eval",
        "bbox",
        "--cfg-options",
        f"dist_params.backend={backend}",
        *cfg_options,
    ]
    inherited = (base_env or {}).get("PYTHONPATH", "")
    env = {"PYTHONPATH": ":".join([uniad_root, *([inherited] if inherited else [])]), "PYTHONUNBUFFERED": "1"}
    return LaunchCommand(argv=argv, env=env, cwd=uniad_root, backend=backend)


def _check_python(python: str | None) -> None:
    if not python:
        raise LaunchError(
            "no training interpreter: it is resolved on the worker that launches the attempt (UNIAD_PYTHON there), "
            "set StageSpec.python before building the launch"
        )


def _train_args(spec: StageSpec, backend: str, launcher: str, trainside: Path) -> tuple[list[str], list[str]]:
    """``tools/train.py`` and its arguments for one stage, and the PYTHONPATH entries the ranks need
    (``trainside``: the work dir's copy of the trainside modules, ``ship_trainside``)."""
    argv = ["tools/train.py", spec.config, "--launcher", launcher]
    if spec.deterministic:
        argv.append("--deterministic")
    if not spec.validate:
        argv.append("--no-validate")
    argv += ["--work-dir", spec.work_dir]
    if spec.seed is not None:
        argv += ["--seed", str(spec.seed)]
    if spec.resume_from:
        argv += ["--resume-from", spec.resume_from]
    # UniAD's mmdet_train.py asserts total_epochs == runner.max_epochs, and a cfg-options merge does not re-evaluate
    # the config's max_epochs=total_epochs: set both, or every rank dies after building the datasets.
    options = [
        f"dist_params.backend={backend}",
        f"total_epochs={spec.max_epochs}",
        f"runner.max_epochs={spec.max_epochs}",
    ]
    if spec.load_from:
        options.append(f"load_from={spec.load_from}")
    if spec.validate and spec.evaluation_interval is not None:
        options.append(f"evaluation.interval={spec.evaluation_interval}")
    path = [spec.uniad_root]
    if spec.checkpoint_interval_iters or spec.stop_signal:
        options += [
            f"custom_imports.imports=[{ITER_CHECKPOINT_MODULE}]",
            "custom_imports.allow_failed_imports=False",
            f"runner.type={ITER_CHECKPOINT_RUNNER}",
        ]
        if spec.checkpoint_interval_iters:
            options.append(f"runner.checkpoint_interval_iters={spec.checkpoint_interval_iters}")
        if spec.stop_signal:
            options.append(f"runner.stop_signal={spec.stop_signal}")
        path.append(str(trainside))
    return [*argv, "--cfg-options", *options, *spec.cfg_options], path


def _pythonpath(path: list[str], base_env: Mapping[str, str] | None) -> dict[str, str]:
    inherited = (base_env or {}).get("PYTHONPATH", "")
    return {"PYTHONPATH": ":".join(path + ([inherited] if inherited else [])), "PYTHONUNBUFFERED": "1"}


def build_launch(
    spec: StageSpec, *, backend: str, master_port: int, trainside: Path, base_env: Mapping[str, str] | None = None
) -> LaunchCommand:
    """The argv, environment additions and working directory of one stage; ``backend`` is already resolved."""
    args, path = _train_args(spec, backend, "pytorch", trainside)
    argv = [*_distributed(spec.python, spec.launcher, spec.nproc_per_node, backend, master_port), *args]
    return LaunchCommand(argv=argv, env=_pythonpath(path, base_env), cwd=spec.uniad_root, backend=backend)


@dataclass(frozen=True)
class SlurmSettings:
    """How a stage runs as a Slurm batch job (validated by uniad.run.params)."""

    nnodes: int = 1
    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    extra_args: tuple[str, ...] = ()
    # GPUs requested per node (UniAD's script: --gres=gpu:GPUS_PER_NODE), of gpu_type when the site names types.
    gpus_per_node: int = 0
    gpu_type: str | None = None
    # CPUs per rank (UniAD's script: 5); None: the partition's CPUs per GPU, decided when the job is submitted.
    cpus_per_task: int | None = None
    # Jobs of a stage that end PREEMPTED, NODE_FAIL, TIMEOUT or TIME_LIMIT continue in a new job this many times at
    # most.
    max_continuations: int = 20

    @property
    def gres(self) -> str | None:
        """The ``--gres`` value, or None without a GPU request."""
        if not self.gpus_per_node:
            return None
        return f"gpu:{self.gpu_type}:{self.gpus_per_node}" if self.gpu_type else f"gpu:{self.gpus_per_node}"


def build_slurm_job(
    spec: StageSpec,
    slurm: SlurmSettings,
    *,
    backend: str,
    job_name: str,
    comment: str,
    job_file: Path,
    output: Path,
    trainside: Path,
    cpus_per_task: int,
    env: Mapping[str, str],
    evaluate: str | None = None,
    resume_position: tuple[int, int] | None = None,
    stop_signal_lead_s: int = 0,
) -> tuple[list[str], dict]:
    """The ``sbatch`` argv of one attempt of a stage, and the job file its batch step reads.

    UniAD's own cluster path (``tools/uniad_slurm_train.sh``): srun starts ``nproc_per_node`` tasks on each of
    ``nnodes`` nodes with ``--gres=gpu:N`` and ``--cpus-per-task``, each runs ``tools/train.py ... --launcher slurm``
    and mmcv derives its rank from SLURM_PROCID. The batch step is ``trainside/uniad_slurm_job.py JOB_FILE`` from
    the work dir's copy (``trainside``), run by the training interpreter: the ranks' argv travels as a JSON list, so
    no parameter is ever shell text; the only shell words are the interpreter's and the files' paths, quoted.
    ``--export=NONE``: the job's environment is ``env`` (``slurm.job_environment``), written into the job file,
    never the submitting worker's. ``job_name`` and ``comment`` identify the stage of a run on the cluster.
    ``evaluate``: a checkpoint to evaluate with ``tools/test.py ... --eval bbox`` on one node instead
    (``tools/uniad_slurm_eval.sh``).

    Requeue-safe: ``--requeue`` with output appended, since the batch step chooses the resume point at each start
    of the job (``resume_position``: where ``spec.resume_from`` is, the floor it looks above). With
    ``stop_signal_lead_s``, ``--signal=B:USR2@LEAD`` on every training job, whether its limit is ``slurm_time_limit``
    or the partition's (which a job that names none gets): the ranks checkpoint and stop that long before it."""
    _check_python(spec.python)
    if spec.needs_gpus and not slurm.gres:
        raise LaunchError(
            "profile uniad needs a GPU per rank and this job requests none: set slurm_gpus_per_node (default: "
            "nproc_per_node); without a GPU request its ranks see no GPU (device cgroups) or use GPUs Slurm gave to "
            "another job"
        )
    stops = evaluate is None and stop_signal_lead_s > 0
    if stops:
        spec = replace(spec, stop_signal=STOP_SIGNAL)
    if evaluate is None:
        args, path = _train_args(spec, backend, "slurm", trainside)
        nodes = slurm.nnodes
    else:
        args = [
            "tools/test.py",
            spec.config,
            evaluate,
            "--launcher",
            "slurm",
            "--eval",
            "bbox",
            "--cfg-options",
            f"dist_params.backend={backend}",
        ]
        path, nodes = [spec.uniad_root], 1
    resources = [f"--ntasks-per-node={spec.nproc_per_node}", f"--cpus-per-task={cpus_per_task}"]
    if slurm.gres:
        resources.append(f"--gres={slurm.gres}")
    job = {
        "argv": [spec.python, *args],
        "env": {**env, "PYTHONPATH": ":".join(path), "PYTHONUNBUFFERED": "1"},
        "srun": resources,  # again on the srun line: a step inherits neither --cpus-per-task nor, always, --gres
        "resume": {
            "work_dir": str(spec.work_dir_path if evaluate is None else job_file.parent),
            "from": spec.resume_from if evaluate is None else None,
            "position": list(resume_position) if resume_position and evaluate is None else None,
            "max_epochs": spec.max_epochs,
            # An evaluation job resumes nothing: no checkpoint is above this floor.
            "validate": spec.validate if evaluate is None else False,
        },
    }
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name}",
        f"--comment={comment}",
        # Slurm starts a job of this name only once no other of the same name (and user) runs: never two jobs of a
        # stage of a run in its work dir, whatever the pipeline believed when it submitted.
        "--dependency=singleton",
        # Preempted, or a node lost: Slurm starts the job again under the same id, and its batch step resumes from
        # the newest checkpoint then (a job that ends PREEMPTED, NODE_FAIL or TIMEOUT all the same is continued in a
        # new job by the pipeline, slurm_max_continuations). Each start appends to the same output.
        "--requeue" if evaluate is None else "--no-requeue",
        "--open-mode=append",
        f"--nodes={nodes}",
        *resources,
        "--export=NONE",
        f"--chdir={spec.uniad_root}",
        f"--output={output}",
    ]
    if slurm.partition:
        argv.append(f"--partition={slurm.partition}")
    if slurm.account:
        argv.append(f"--account={slurm.account}")
    if slurm.time_limit:
        argv.append(f"--time={slurm.time_limit}")
    if stops:
        # To the batch step only (B:), which passes it on to the ranks; not USR1, which NCCL may use.
        argv.append(f"--signal=B:{STOP_SIGNAL}@{stop_signal_lead_s}")
    argv += list(slurm.extra_args)
    step = [spec.python, str(trainside / "uniad_slurm_job.py"), str(job_file)]
    argv += ["--wrap", "exec " + " ".join(shlex.quote(word) for word in step)]
    return argv, job


def find_free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; the rendezvous binds it right after, so collisions are rare."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
