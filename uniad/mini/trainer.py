"""``tools/train.py`` of the mini UniAD: UniAD's command line on the real mmcv 1.x runner.

Run from a mini root (``python -m uniad init-mini DIR``), exactly as UniAD is run::

    python -m torch.distributed.run --nproc_per_node=2 --master_port=29511 tools/train.py \\
        projects/configs/stage1_track_map/full_track_map.py --launcher pytorch --deterministic \\
        --work-dir projects/work_dirs/stage1_track_map/full_track_map/ \\
        --cfg-options log_config.interval=10 dist_params.backend=gloo

The runner is mmcv's EpochBasedRunner with its own hooks (LrUpdaterHook cosine + linear warmup, OptimizerHook with
grad_clip, CheckpointHook writing ``epoch_N.pth`` and the ``latest.pth`` symlink, TextLoggerHook writing
``<timestamp>.log`` and ``<timestamp>.log.json``), so the pipeline sees what a real UniAD run produces.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import platform
import random
import sys
import time

import numpy as np
import torch

from .compat import ensure_torchvision_importable, init_dist, skip_epoch_pauses

ensure_torchvision_importable()

import mmcv  # noqa: E402
from mmcv import Config, DictAction  # noqa: E402
from mmcv.parallel import MMDataParallel, MMDistributedDataParallel  # noqa: E402
from mmcv.runner import (  # noqa: E402
    DistSamplerSeedHook,
    Hook,
    OptimizerHook,
    build_optimizer,
    build_runner,
    get_dist_info,
)
from mmcv.utils import build_from_cfg, get_logger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from .registry import DATASETS, MODELS  # noqa: E402
from .sampler import DistributedGroupSampler  # noqa: E402
from .testing import MiniEvalHook  # noqa: E402


class FaultInjectionHook(Hook):
    """A test switch for the pipeline's health watch, off unless the config has ``fault_injection``::

        --cfg-options fault_injection.kind=nan_loss fault_injection.epoch=2 fault_injection.iter=5 [fault_injection.once=True]

    From that iteration on: ``nan_loss`` makes the loss NaN (a diverged run), ``grad_explosion`` scales it by 1e6,
    ``zero_head`` makes the map head's classification loss exactly 0.0 (as UniAD's nan_to_num logs a NaN term),
    ``hang`` blocks rank 0 forever (a stuck collective), ``crash`` kills rank 0 with exit code 134, ``slow_data``
    makes every rank wait ``fault_injection.seconds`` (default 0.5) for each batch, as training that waits on a slow
    shared filesystem does: a stage that lasts minutes whatever the CPUs do. (Not ``nan``: mmcv's --cfg-options would
    read that as the float NaN.)
    """

    KINDS = ("nan_loss", "grad_explosion", "zero_head", "hang", "crash", "slow_data")

    def __init__(self, kind: str, epoch: int, iter: int = 1, once: bool = False, seconds: float = 0.5) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"fault_injection.kind must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.epoch, self.iter, self.once = kind, int(epoch), int(iter), bool(once)
        self.seconds = float(seconds)

    def before_train_iter(self, runner) -> None:
        if (runner.epoch + 1, runner.inner_iter + 1) < (self.epoch, self.iter):
            return
        # once=True: only the first attempt is hit, so a retry can show that it recovers.
        marker = osp.join(runner.work_dir, ".fault_injected")
        if self.once:
            if osp.exists(marker):
                return
            if runner.rank == 0:
                open(marker, "w").close()
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        if self.kind in ("nan_loss", "grad_explosion", "zero_head"):
            model.loss_fault = self.kind
        elif runner.rank == 0 and self.kind == "hang":
            runner.logger.info("fault injection: rank 0 hangs at epoch %d iter %d", self.epoch, self.iter)
            time.sleep(10**6)
        elif runner.rank == 0 and self.kind == "crash":
            os._exit(134)
        elif self.kind == "slow_data":
            time.sleep(self.seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the mini UniAD (UniAD's tools/train.py interface)")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--resume-from", help="the checkpoint file to resume from")
    parser.add_argument("--no-validate", action="store_true", help="do not evaluate during training")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--gpus", type=int, help="number of gpus to use (non-distributed training only)")
    group.add_argument("--gpu-ids", type=int, nargs="+", help="ids of gpus to use (non-distributed training only)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--deterministic", action="store_true", help="deterministic options for CUDNN backend")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config settings, key=value")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    # torch.distributed.launch without --use_env passes --local-rank (torch 2.x) or --local_rank (torch 1.x).
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    parser.add_argument("--autoscale-lr", action="store_true", help="scale lr with the number of gpus")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    # As UniAD's train.py: modules named on the command line (custom_imports.imports=[...]) are imported after the
    # merge, so a runner or hook can be selected without editing the config.
    if cfg.get("custom_imports", None):
        from mmcv.utils import import_modules_from_strings

        import_modules_from_strings(**cfg["custom_imports"])
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    # Like UniAD's train.py: a --resume-from that does not exist is ignored and training starts from load_from.
    if args.resume_from is not None and osp.isfile(args.resume_from):
        cfg.resume_from = args.resume_from

    if cfg.data.get("workers_per_gpu", 0) == 0:
        skip_epoch_pauses()  # no loader worker process to wait for at an epoch transition
    distributed = args.launcher != "none"
    if distributed:
        init_dist(args.launcher, **cfg.dist_params)
    rank, world_size = get_dist_info()
    # As UniAD's train.py: the config that goes into every checkpoint's meta says how many processes trained it.
    cfg.gpu_ids = range(world_size)
    # As UniAD's mmdet_train.py: a config with total_epochs must agree with runner.max_epochs, so a run that sets
    # only one of them through --cfg-options dies here, as it would on the real checkout.
    if "total_epochs" in cfg:
        assert cfg.total_epochs == cfg.runner.max_epochs
    if args.autoscale_lr:
        cfg.optimizer["lr"] = cfg.optimizer["lr"] * world_size / 8

    mmcv.mkdir_or_exist(osp.abspath(cfg.work_dir))
    if rank == 0:
        cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    log_file = osp.join(cfg.work_dir, f"{timestamp}.log")
    logger = get_logger("mmdet", log_file=log_file, log_level=cfg.log_level)

    env_info = (
        f"sys.platform: {sys.platform}\nPython: {platform.python_version()}\nPyTorch: {torch.__version__}\n"
        f"CUDA available: {torch.cuda.is_available()}\nMMCV: {mmcv.__version__}\nworld_size: {world_size}"
    )
    logger.info("Environment info:\n%s", env_info)
    logger.info("Distributed training: %s", distributed)
    logger.info("Config:\n%s", cfg.pretty_text)
    logger.info("Set random seed to %d, deterministic: %s", args.seed, args.deterministic)
    set_random_seed(args.seed, deterministic=args.deterministic)
    cfg.seed = args.seed
    meta = dict(env_info=env_info, config=cfg.pretty_text, seed=args.seed, exp_name=osp.basename(args.config))

    model = build_from_cfg(cfg.model, MODELS)
    dataset = build_from_cfg(cfg.data.train, DATASETS)
    # UniAD's sampler and its per-rank slicing (one contiguous block per rank); it needs no process group, and
    # DistSamplerSeedHook reshuffles it per epoch.
    sampler = DistributedGroupSampler(
        dataset, samples_per_gpu=cfg.data.samples_per_gpu, num_replicas=world_size, rank=rank, seed=args.seed
    )
    data_loader = DataLoader(
        dataset,
        batch_size=cfg.data.samples_per_gpu,
        sampler=sampler,
        num_workers=cfg.data.workers_per_gpu,
        drop_last=True,
        persistent_workers=cfg.data.workers_per_gpu > 0,
    )

    use_cuda = torch.cuda.is_available()
    if distributed:
        if use_cuda:
            model = MMDistributedDataParallel(
                model.cuda(), device_ids=[torch.cuda.current_device()], broadcast_buffers=False
            )
        else:
            model = MMDistributedDataParallel(model, device_ids=None, broadcast_buffers=False)
    else:
        model = MMDataParallel(model.cuda(), device_ids=[0]) if use_cuda else MMDataParallel(model)

    optimizer = build_optimizer(model, cfg.optimizer)
    runner = build_runner(
        cfg.runner,
        default_args=dict(model=model, optimizer=optimizer, work_dir=cfg.work_dir, logger=logger, meta=meta),
    )
    runner.timestamp = timestamp
    optimizer_config = cfg.optimizer_config
    if "type" not in optimizer_config:
        optimizer_config = OptimizerHook(**optimizer_config)
    cfg.checkpoint_config.meta = dict(CLASSES=list(dataset.CLASSES), mini_uniad=True)
    runner.register_training_hooks(
        cfg.lr_config, optimizer_config, cfg.checkpoint_config, cfg.log_config, cfg.get("momentum_config", None)
    )
    runner.register_hook(DistSamplerSeedHook())
    # As UniAD's mmdet_train.py: evaluate the val split at evaluation.interval unless --no-validate.
    if not args.no_validate and cfg.get("evaluation") and cfg.data.get("val"):
        val_dataset = build_from_cfg(cfg.data.val, DATASETS)
        val_loader = DataLoader(val_dataset, batch_size=cfg.data.samples_per_gpu, shuffle=False)
        eval_cfg = {k: v for k, v in cfg.evaluation.items() if k in ("interval", "start")}
        runner.register_hook(MiniEvalHook(val_loader, by_epoch=True, **eval_cfg), priority="LOW")
    if cfg.get("fault_injection"):
        runner.register_hook(FaultInjectionHook(**cfg.fault_injection))

    if cfg.resume_from:
        runner.resume(cfg.resume_from)
    elif cfg.load_from:
        runner.load_checkpoint(cfg.load_from)
    runner.run([data_loader], cfg.workflow)
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
