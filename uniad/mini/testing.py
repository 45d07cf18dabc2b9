"""Test mode of the mini UniAD on every rank: predictions gathered on rank 0 in dataset order, the evaluation hook
that runs them during training, and ``tools/test.py`` (UniAD's command line).

mmcv's own ``DistEvalHook`` collects results through a CUDA tensor (``collect_results_cpu``), which a CPU-only gloo
run does not have: the gather here is ``all_gather_object``, which works on gloo and NCCL alike.

    python -m torch.distributed.run --nproc_per_node=2 tools/test.py CONFIG CHECKPOINT --launcher pytorch --eval bbox
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from .compat import ensure_torchvision_importable, init_dist

ensure_torchvision_importable()

from mmcv import Config, DictAction  # noqa: E402
from mmcv.runner import EvalHook, get_dist_info  # noqa: E402
from mmcv.utils import build_from_cfg  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from .registry import DATASETS, MODELS  # noqa: E402


def predict(model, dataset, batch_size: int) -> list[dict]:
    """Every rank predicts its share (indices rank, rank + world, ...); all get the results in dataset order."""
    rank, world = get_dist_info()
    module = model.module if hasattr(model, "module") else model
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    mine = []
    indices = list(range(rank, len(dataset), world))
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = {k: v.to(device) for k, v in default_collate([dataset[i] for i in chunk]).items()}
            mine += list(zip(chunk, module(return_loss=False, **batch)))
    finally:
        module.train(was_training)
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        mine = [item for part in parts for item in part]
    return [result for _, result in sorted(mine, key=lambda item: item[0])]


class MiniEvalHook(EvalHook):
    """mmcv's EvalHook (interval, start, logging the returned metrics as the ``Epoch(val)`` record) over the
    distributed ``predict``; only rank 0 evaluates and logs, as UniAD's CustomDistEvalHook."""

    def _do_evaluate(self, runner) -> None:
        if not self._should_evaluate(runner):
            return
        results = predict(runner.model, self.dataloader.dataset, self.dataloader.batch_size)
        if runner.rank != 0:
            return
        runner.log_buffer.output["eval_iter_num"] = len(self.dataloader)
        self.evaluate(runner, results)


def load_weights(model, checkpoint: str) -> dict:
    """A checkpoint's weights into ``model`` (weights_only: never unpickle objects); returns its meta."""
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # mmcv's save_checkpoint also stores non-persistent buffers (derived, here the BEV grid): not weights.
    derived = {
        f"{name}.{b}".lstrip(".") for name, mod in model.named_modules() for b in mod._non_persistent_buffers_set
    }
    unexpected = [key for key in unexpected if key not in derived]
    if unexpected:
        raise RuntimeError(f"{checkpoint} has weights this model does not: {unexpected[:5]}")
    if missing:
        print(f"{checkpoint} lacks {len(missing)} weight(s) of this model, e.g. {missing[:3]}", flush=True)
    return obj.get("meta") or {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Test the mini UniAD (UniAD's tools/test.py interface)")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--out", help="accepted for UniAD compatibility (results are not pickled)")
    parser.add_argument("--eval", nargs="+", help="evaluation metrics, e.g. bbox")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.launcher != "none":
        init_dist(args.launcher, **cfg.dist_params)
    model = build_from_cfg(cfg.model, MODELS)
    load_weights(model, args.checkpoint)
    if torch.cuda.is_available():
        model = model.cuda()
    dataset = build_from_cfg(cfg.data.test, DATASETS)
    outputs = predict(model, dataset, cfg.data.samples_per_gpu)
    rank, _ = get_dist_info()
    if rank == 0 and args.eval:
        # As UniAD's test.py: the returned metrics printed as a dict, after the tables evaluate() prints.
        print(dataset.evaluate(outputs), flush=True)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
