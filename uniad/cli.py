"""Command line of the domain package: what the Airflow tasks call, usable by hand.

    python -m uniad init-mini /tmp/uniad-mini
    python -m uniad train --uniad-root /tmp/uniad-mini \\
        --config projects/configs/stage1_track_map/full_track_map.py --nproc-per-node 2 --epochs 6
    python -m uniad inspect /tmp/uniad-mini/projects/work_dirs/stage1_track_map/full_track_map/latest.pth --stage stage1
    python -m uniad promote /tmp/uniad-mini/projects/work_dirs/stage1_track_map/full_track_map/latest.pth \\
        /tmp/uniad-mini/ckpts/full_track_map.pth --stage stage1 --expect-epoch 6
    python -m uniad analyze <work_dir>/<timestamp>.log.json --require "pts_bbox_NuScenes/amota>=0.35" --json
    python -m uniad evaluate --uniad-root /tmp/uniad-mini --config projects/configs/stage1_track_map/full_track_map.py \\
        --checkpoint ckpts/full_track_map.pth --nproc-per-node 2
    python -m uniad models                                        # registered versions, the champion marked
    python -m uniad models --rollback 3 --publish-path /tmp/uniad-mini/ckpts/uniad_e2e.pth

Exit status: 0 success, 1 failure or invalid checkpoint, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import ParamError, PipelineError
from .health.monitor import Thresholds
from .run.configs import read_configs
from .run.params import DEFAULT_NPROC, check_field, check_iteration_checkpoints, parse_cfg_options
from .run.plan import stage_spec
from .stages import STAGES
from .vocabulary import BACKENDS, LAUNCHERS
from .workdir import WorkDir, text_log_of


def _cmd_init_mini(args: argparse.Namespace) -> int:
    from .mini.scaffold import init_mini_root
    from .vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

    root = init_mini_root(args.dir)
    print(f"mini UniAD root ready at {root}")
    print(f"  stage 1 config: {STAGE1_CONFIG}")
    print(f"  stage 2 config: {STAGE2_CONFIG}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .artifacts.checkpoints import inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint, stage=args.stage, expect_epoch=args.expect_epoch)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.valid else 1


def _cmd_promote(args: argparse.Namespace) -> int:
    from .artifacts.publish import promote_checkpoint

    provenance = promote_checkpoint(args.src, args.dst, stage=args.stage, expect_epoch=args.expect_epoch)
    if args.json:
        print(json.dumps(provenance, indent=2))
    else:
        print(f"promoted {provenance['source_resolved']} -> {provenance['path']}")
        print(f"  epoch {provenance['epoch']}, sha256 {provenance['sha256']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .health.logs import parse_mmcv_train_line
    from .train.process import make_stage_run

    for name, value, flag in (
        ("nproc_per_node", args.nproc_per_node, "--nproc-per-node"),
        ("seed", args.seed, "--seed"),
        ("checkpoint_interval_iters", args.checkpoint_interval_iters, "--checkpoint-interval-iters"),
        ("stage1_epochs", args.epochs, "--epochs"),
    ):
        check_field(name, value, flag)
    if not args.config.endswith(".py"):
        raise ParamError(
            f"--config {args.config!r} is not a python config; e.g. projects/configs/stage2_e2e/full_e2e.py"
        )
    cfg_options = parse_cfg_options(args.cfg_options or [])
    check_iteration_checkpoints(args.checkpoint_interval_iters, cfg_options)
    root = Path(args.uniad_root).resolve()
    if not (root / args.config).is_file():
        raise ParamError(f"--config {args.config!r} not found under {root}")
    (facts,) = read_configs(args.python, root, [(args.config, cfg_options)])
    spec = stage_spec(
        root,
        facts,
        epochs=args.epochs,
        work_dir=args.work_dir,
        nproc_per_node=args.nproc_per_node,
        backend=args.backend,
        launcher=args.launcher,
        deterministic=args.deterministic,
        seed=args.seed,
        load_from=args.load_from,
        resume_from=args.resume_from,
        cfg_options=cfg_options,
        python=args.python,
        checkpoint_interval_iters=args.checkpoint_interval_iters,
        validate=args.validate,
        needs_gpus=args.needs_gpus,
    )

    def show_output(line: str) -> None:
        # Train lines carry 100+ loss keys; the progress line summarises them. Everything else is shown.
        if args.verbose or parse_mmcv_train_line(line) is None:
            print(line, file=sys.stderr, flush=True)

    stage_name = args.stage_name or Path(args.config).stem
    resume_point = None
    if args.run_id:
        from .train.resume import plan_attempt

        attempt = plan_attempt(spec, args.stage or "stage1", run_id=args.run_id)
        spec, resume_point = attempt.spec, attempt.resume_point
        for line in attempt.skipped + attempt.warnings:
            print(f"warning: {line}", file=sys.stderr)
        if attempt.resumed_from:
            print(attempt.describe(), flush=True)
    run = make_stage_run(
        spec,
        stage=stage_name,
        emit_output=show_output,
        emit_progress=lambda progress: print(progress.line(), flush=True),
        thresholds=Thresholds(stall_min_s=args.stall_timeout),
        watch=args.watch,
        resume_point=resume_point,
    )
    result = run.run()
    work_dir = WorkDir(spec.work_dir_path)
    print(f"{result.stage} finished in {result.duration_s:.0f} s; work dir {work_dir.path}")
    if (latest := work_dir.latest_checkpoint()) is not None:
        print(f"  latest checkpoint: {latest}")
    return 0


def _cmd_parse(args: argparse.Namespace) -> int:
    from .health.logs import LogReader, iters_per_epoch_of

    iters = iters_per_epoch_of(text_log_of(args.log))  # json logs lack it; their sibling text log has it
    for record in LogReader(args.log).poll(final=True):
        if iters is not None and record["mode"] == "train":
            record.setdefault("iters_per_epoch", iters)
        print(json.dumps(record))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    import time

    from .health.analysis import analyze_log
    from .health.logs import is_json_log, parse_json_meta, read_log
    from .health.report import write_report
    from .metrics import parse_requirements

    path = Path(args.log)
    if not path.is_file():
        raise PipelineError(f"no log at {path}; give a <work_dir>/<timestamp>.log.json or .log file")
    requirements = parse_requirements(args.require or [])
    # The stage's output (rank 0's printed metric tables) lies beside its logs; --output names other files.
    outputs = args.output if args.output is not None else WorkDir(path.parent).outputs()
    # Whether the stage evaluates at all: its config, in the json log's first line (not a second read of the log).
    meta = None
    if is_json_log(path):
        with open(path, "rb") as handle:
            meta = parse_json_meta(handle.readline())
    evaluates = bool(meta and "evaluation = dict(" in (meta.get("config") or ""))
    analysis, _, _ = analyze_log(
        path,
        outputs=outputs,
        total_epochs=args.total_epochs,
        silence_s=time.time() - path.stat().st_mtime,
        requirements=requirements,
        expect_evaluation=evaluates and not args.no_validate,
    )
    if args.report:
        report = write_report(analysis, read_log(path)[0], args.report, title=path.name)
        print(f"report: {report}", file=sys.stderr)
    if args.json:
        print(json.dumps(analysis.to_dict(), indent=2))
    else:
        latest = analysis.latest
        print(f"verdict    {analysis.verdict}")
        print(
            f"latest     epoch {latest.get('epoch')}/{analysis.total_epochs or '?'} iter {latest.get('iter')}"
            f"/{latest.get('iters_per_epoch') or '?'}"
            + (f" ({analysis.progress:.0%})" if analysis.progress is not None else "")
        )
        print(f"loss       {analysis.loss.get('first')} -> {analysis.loss.get('latest')}")
        print(f"lr         peak {analysis.lr.get('peak')} latest {analysis.lr.get('latest')}")
        print(f"grad_norm  latest {analysis.grad_norm.get('latest')} median {analysis.grad_norm.get('median')}")
        if analysis.metrics:
            values = analysis.metrics["values"]
            print(
                f"metrics    epoch {analysis.metrics['epoch']}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            )
        for finding in analysis.findings:
            print(f"  [{finding.severity}] {finding.code}: {finding.message}")
    return 1 if analysis.failed(strict=args.strict) else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate_checkpoint

    check_field("nproc_per_node", args.nproc_per_node, "--nproc-per-node")
    root = Path(args.uniad_root).resolve()
    checkpoint = Path(args.checkpoint)
    checkpoint = checkpoint if checkpoint.is_absolute() else root / checkpoint
    for what, path in (("--config", root / args.config), ("--checkpoint", checkpoint)):
        if not path.is_file():
            raise ParamError(f"{what} {path} does not exist")
    metrics = evaluate_checkpoint(
        str(root),
        args.config,
        str(checkpoint),
        nproc_per_node=args.nproc_per_node,
        python=args.python,
        launcher=args.launcher,
        backend=args.backend,
        cfg_options=parse_cfg_options(args.cfg_options or []),
        emit_output=lambda line: print(line, file=sys.stderr, flush=True) if args.verbose else None,
    )
    document = {"config": args.config, "checkpoint": str(checkpoint), "metrics": metrics}
    text = json.dumps(document, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"metrics of {checkpoint} written to {args.out}", file=sys.stderr)
    print(text)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import Registry
    from .tracking import Tracking

    if not args.tracking_uri:
        raise ParamError("no tracking server: set MLFLOW_TRACKING_URI or pass --tracking-uri")
    tracking = Tracking(args.tracking_uri)
    registry = Registry(tracking)
    if args.rollback is None:
        versions = registry.versions()
        if tracking.skipped:
            raise PipelineError(f"could not list the registry: {tracking.skipped[-1]}")
        for version in versions:
            marks = " champion" if version["champion"] else ""
            print(
                f"{version['number']:>4}{marks:9} run {version['run_id']}  epoch {version['epoch']}  "
                f"sha256 {(version['sha256'] or '')[:12]}  {json.dumps(version['metrics'], sort_keys=True)}"
            )
        return 0
    if not args.publish_path:
        raise ParamError("--rollback needs --publish-path: the published file that is to hold that version")
    provenance = registry.rollback(args.rollback, Path(args.publish_path))
    print(
        f"{provenance['path']} is uniad_e2e version {args.rollback} again (sha256 {provenance['sha256']}); "
        "the champion alias names it"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from .train import local_job
    from .workdir import WorkDir

    work_dir = WorkDir(Path(args.work_dir))
    job_id = local_job.leaseholder(work_dir)
    if job_id is None:
        print(f"no local job trains in {work_dir.path}", file=sys.stderr)
        return 1
    local_job.cancel(work_dir, job_id, args.reason)
    state = local_job.wait_for_end(work_dir, job_id)
    print(f"local job {job_id}: {state['JobState']}")
    return 0 if state["JobState"] not in local_job.ACTIVE else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uniad", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-mini", help="write a UniAD-shaped root for the mini model")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_init_mini)

    p = sub.add_parser("inspect", help="load a checkpoint safely and check it for a stage")
    p.add_argument("checkpoint")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--expect-epoch", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("promote", help="verify a checkpoint and publish it atomically with provenance")
    p.add_argument("src", help="e.g. .../latest.pth (symlinks are resolved)")
    p.add_argument("dst", help="e.g. ckpts/full_track_map.pth")
    p.add_argument("--stage", choices=STAGES, default="stage1")
    p.add_argument("--expect-epoch", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_promote)

    p = sub.add_parser("parse", help="print a training log's records as JSON lines")
    p.add_argument("log", help="mmcv *.log.json or *.log, or an mmengine text log")
    p.set_defaults(func=_cmd_parse)

    p = sub.add_parser("analyze", help="training-health analysis of a log (exit 1 when unhealthy)")
    p.add_argument("log")
    p.add_argument("--total-epochs", type=int, help="used when the log's config does not say")
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", metavar="DIR", help="write report.md and PNG plots into DIR")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument(
        "--require",
        action="append",
        metavar="METRIC>=VALUE",
        help="a requirement on the final evaluation's metrics (>= or <=), repeatable, e.g. "
        "pts_bbox_NuScenes/amota>=0.35; each one not met is an error finding (exit 1)",
    )
    p.add_argument(
        "--output",
        action="append",
        metavar="FILE",
        help="a stage output with rank 0's printed metric tables (default: the output_*.txt beside the log)",
    )
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="validation was off on purpose: no not_evaluated finding for a final epoch without metrics",
    )
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint with the root's tools/test.py; metrics as JSON")
    p.add_argument("--uniad-root", required=True)
    p.add_argument("--config", required=True, help="relative to the root, e.g. projects/configs/stage2_e2e/full_e2e.py")
    p.add_argument("--checkpoint", required=True, help="absolute, or relative to the root, e.g. ckpts/uniad_e2e.pth")
    p.add_argument("--nproc-per-node", type=int, default=DEFAULT_NPROC["uniad"], help="default: %(default)s")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE")
    p.add_argument("--python", default=os.environ.get("UNIAD_PYTHON", sys.executable))
    p.add_argument("--out", metavar="FILE", help="also write the JSON there")
    p.add_argument("-v", "--verbose", action="store_true", help="show tools/test.py's output")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "stop", help="stop the local job training in a work dir (what marking its task failed does), and wait for it"
    )
    p.add_argument("work_dir")
    p.add_argument("--reason", default="stopped by hand (python -m uniad stop)")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser(
        "models", help="the stage-2 model's registered versions; --rollback N puts version N back at the publish path"
    )
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"), help="default: MLFLOW_TRACKING_URI")
    p.add_argument("--rollback", metavar="VERSION", help="the version the champion alias and the published file go to")
    p.add_argument("--publish-path", help="the published model file (the run's publish_path), with --rollback")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train one stage with torch.distributed, outside Airflow")
    p.add_argument("--uniad-root", required=True)
    p.add_argument("--config", required=True, help="relative to the root, e.g. projects/configs/stage2_e2e/full_e2e.py")
    p.add_argument("--work-dir", help="default: projects/work_dirs/<group>/<config name>/")
    p.add_argument("--epochs", type=int, required=True, help="runner.max_epochs, e.g. 6 for stage 1")
    p.add_argument("--nproc-per-node", type=int, default=DEFAULT_NPROC["uniad"], help="default: %(default)s")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--launcher", choices=LAUNCHERS, default="torchrun")
    p.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load-from")
    p.add_argument("--resume-from")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE")
    p.add_argument(
        "--checkpoint-interval-iters", type=int, metavar="N", help="also checkpoint every N iterations of an epoch"
    )
    p.add_argument("--python", default=os.environ.get("UNIAD_PYTHON", sys.executable))
    p.add_argument("--no-validate", dest="validate", action="store_false", help="no evaluation during training")
    p.add_argument(
        "--needs-gpus",
        action="store_true",
        help="refuse to launch on a worker without GPUs (a real UniAD's ranks die in mmcv's init without one)",
    )
    p.add_argument("--stage-name", help="label for progress lines; default: the config's name")
    p.add_argument("--no-watch", dest="watch", action="store_false", help="do not stop on NaN/explosion/stall")
    p.add_argument(
        "--run-id",
        help="the pipeline run this attempt belongs to: the same id resumes from the newest valid checkpoint, a new "
        "id moves an older run's artifacts to previous_runs/ and starts fresh",
    )
    p.add_argument("--stage", choices=STAGES, help="checkpoint layout to resume from (with --run-id)")
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=Thresholds().stall_min_s,
        metavar="S",
        help="stop when the log is silent this long (and 5x the usual interval); default %(default)s",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also print every raw train line")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `python -m uniad parse LOG | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
