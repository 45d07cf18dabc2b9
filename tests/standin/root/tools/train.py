"""UniAD v2.0's tools/train.py for the contract stand-in: the same arguments (no --local_rank), the same order of
work (config and cfg options, the plugin, work_dir, resume_from only when it is a file, init_dist, the logger and
meta, the datasets from the info files), then the plugin's custom_train_model."""

import argparse
import os
import os.path as osp
import pickle
import sys
import time

sys.path.insert(0, os.getcwd())  # UniAD is run from its root with the root on PYTHONPATH

from mmcv import Config, DictAction  # noqa: E402
from mmcv.runner import get_dist_info, init_dist  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description="Train a detector")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument("--resume-from", help="the checkpoint file to resume from")
    parser.add_argument("--no-validate", action="store_true")
    group_gpus = parser.add_mutually_exclusive_group()
    group_gpus.add_argument("--gpus", type=int)
    group_gpus.add_argument("--gpu-ids", type=int, nargs="+")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--options", nargs="+", action=DictAction)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    parser.add_argument("--autoscale-lr", action="store_true")
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get("plugin"):
        from projects.mmdet3d_plugin.uniad.apis.train import custom_train_model
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    # UniAD ignores a --resume-from that is not a file and starts from load_from.
    if args.resume_from is not None and osp.isfile(args.resume_from):
        cfg.resume_from = args.resume_from
    cfg.gpu_ids = range(1) if args.gpus is None else range(args.gpus)
    if args.launcher == "none":
        distributed = False
    else:
        distributed = True
        init_dist(args.launcher, **cfg.dist_params)
        _, world_size = get_dist_info()
        cfg.gpu_ids = range(world_size)
    os.makedirs(osp.abspath(cfg.work_dir), exist_ok=True)
    cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    meta = {
        "env_info": f"sys.platform: linux\nPython: {sys.version.split()[0]}\nCUDA available: True\n"
        f"world_size: {len(cfg.gpu_ids)}",
        "config": cfg.pretty_text,
        "seed": args.seed,
        "exp_name": osp.basename(args.config),
    }
    with open(cfg.data.train.ann_file, "rb") as handle:  # UniAD's dataset loads its info file first
        infos = pickle.load(handle)["infos"]
    custom_train_model(
        None, [infos], cfg, distributed=distributed, validate=not args.no_validate, timestamp=timestamp, meta=meta
    )


if __name__ == "__main__":
    main()
