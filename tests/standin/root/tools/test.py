"""UniAD's tools/test.py for the contract stand-in: CONFIG CHECKPOINT --launcher pytorch --eval bbox; rank 0 prints
the evaluation as UniAD does."""

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())

from mmcv import Config, DictAction  # noqa: E402
from mmcv.runner import get_dist_info, init_dist  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description="MMDet test (and eval) a model")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out")
    parser.add_argument("--eval", type=str, nargs="+")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    from projects.mmdet3d_plugin.uniad.apis.train import evaluate, load_checkpoint

    if args.launcher != "none":
        init_dist(args.launcher, **cfg.dist_params)
    meta = load_checkpoint(args.checkpoint)["meta"]
    rank, _ = get_dist_info()
    if rank == 0:
        print(evaluate(cfg, int(meta.get("epoch", 1))), flush=True)


if __name__ == "__main__":
    main()
