"""Checkpoints every N iterations inside an epoch, and a resume that continues from the middle of that epoch.

mmcv 1.x's EpochBasedRunner can only resume at an epoch boundary: its CheckpointHook with ``by_epoch=False``
writes a file whose meta says the epoch is complete, and a resume from it skips the rest of the epoch. A UniAD
stage-1 epoch is ~8 hours on 8 GPUs, so a crash loses up to that much. This runner, selected from the command line
(no config edits)::

    --cfg-options custom_imports.imports=[uniad_iter_checkpoint] custom_imports.allow_failed_imports=False \\
        runner.type=IterCheckpointEpochBasedRunner runner.checkpoint_interval_iters=500

* after every ``checkpoint_interval_iters`` iterations of an epoch (not its last one: ``epoch_N.pth`` covers that),
  rank 0 writes ``epoch_{E}_iter_{K}.pth`` atomically (temporary file, then rename): model, optimizer, and meta
  with ``epoch`` = epochs completed (E - 1), ``iter`` = global iterations done, and ``mid_epoch`` = {inner_iter: K,
  world_size}. Only the newest one is kept, and those of an epoch go once its ``epoch_E.pth`` exists.
* ``resume`` from such a file continues epoch E after its first K iterations: every rank skips those batches by
  advancing the batch sampler (their samples are never loaded), iteration numbers in logs and hooks stay those of
  the uninterrupted run, and the data order, learning rate and optimizer state are the ones it would have had.
  Only with the world size that wrote it: the sampler's order depends on it (the pipeline falls back to the last
  epoch checkpoint instead).
* ``latest.pth`` is not touched: it still points at the newest complete epoch, which is what gates promote.
* ``runner.stop_signal=USR2`` (Slurm jobs with a time limit, sent ahead of it by ``--signal``): a rank that
  receives it asks to stop; every iteration the ranks agree (one all-reduce of a flag), and at the first iteration
  any of them asked, rank 0 writes ``epoch_{E}_iter_{K}.pth`` and every rank exits ``STOPPED_FOR_TIME_LIMIT``, so
  the next job loses nothing of it. At an epoch's last iteration the stop waits one iteration: ``epoch_N.pth``
  comes first.

UniAD's tools/train.py imports ``custom_imports`` after applying ``--cfg-options`` and builds the runner from
``cfg.runner``, so this works with an unmodified UniAD checkout.
"""

import itertools
import os
import os.path as osp
import signal

import torch
import torch.distributed as dist
from mmcv.runner import RUNNERS, CheckpointHook, EpochBasedRunner, Hook
from mmcv.runner.checkpoint import save_checkpoint
from torch.utils.data import DataLoader
from uniad_workdir import EPOCH_FILE, ITER_FILE, ITER_PATTERN, MID_EPOCH_META_KEY, STOPPED_FOR_TIME_LIMIT


class _SkipBatches:
    """A batch sampler without its first ``skip`` batches; indices only, so no sample of them is loaded."""

    def __init__(self, batch_sampler, skip):
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(len(self.batch_sampler) - self.skip, 0)


class _RestOfEpoch:
    """The batches of ``loader`` after the first ``skip``. ``len`` is the whole epoch's (the runner's iteration
    counters and the logger's ``[iter/len]`` expect it); every other attribute is the loader's, so hooks that set
    the sampler's epoch before iteration starts still shape the order of the remaining batches."""

    def __init__(self, loader, skip):
        self._loader = loader
        self._skip = skip

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def __iter__(self):
        loader = self._loader
        if loader.batch_sampler is None:  # no automatic batching: nothing to advance by index
            return itertools.islice(iter(loader), self._skip, None)
        options = dict(
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
        )
        if loader.num_workers > 0:
            options.update(
                multiprocessing_context=loader.multiprocessing_context, prefetch_factor=loader.prefetch_factor
            )
        rest = DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, self._skip), **options)
        return iter(rest)


class _IterCheckpointHook(Hook):
    """Runs after the optimizer step of an iteration (priority LOW), so the saved weights include it."""

    def __init__(self, interval):
        self.interval = interval

    def after_train_iter(self, runner):
        done = runner.inner_iter + 1
        if done % self.interval == 0 and done < len(runner.data_loader):
            runner.save_iter_checkpoint(done)


class _StopOnSignalHook(Hook):
    """After the iteration checkpoint hook: the ranks agree whether any was asked to stop, then all stop at once
    (a rank that stopped alone would leave the others waiting in the next all-reduce)."""

    def __init__(self, signum):
        self.requested = False
        signal.signal(signum, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def _agreed(self):
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        flag = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def after_train_iter(self, runner):
        if not self._agreed():
            return
        done = runner.inner_iter + 1
        if done >= len(runner.data_loader):
            self.requested = True  # every rank: the epoch's own checkpoint first, then stop at the next iteration
            return
        if not osp.exists(osp.join(runner.work_dir, ITER_FILE.format(runner.epoch + 1, done))):
            runner.save_iter_checkpoint(done)  # unless the interval's checkpoint of this iteration came first
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the file is in place before any rank exits
        runner.logger.info(
            "stopping ahead of the time limit after iteration %d of epoch %d: the next job resumes here",
            done,
            runner.epoch + 1,
        )
        raise SystemExit(STOPPED_FOR_TIME_LIMIT)


@RUNNERS.register_module()
class IterCheckpointEpochBasedRunner(EpochBasedRunner):
    """mmcv's EpochBasedRunner plus iteration checkpoints inside an epoch and a mid-epoch resume."""

    def __init__(self, *args, checkpoint_interval_iters=None, stop_signal=None, **kwargs):
        super().__init__(*args, **kwargs)
        interval = checkpoint_interval_iters  # None: epoch checkpoints only, as in the pipeline's parameter
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 1):
            raise ValueError(
                f"runner.checkpoint_interval_iters must be an integer >= 1 or None (epoch checkpoints only), got "
                f"{interval!r}"
            )
        self.checkpoint_interval_iters = interval
        self._resume_skip = 0  # batches of the next epoch trained before the resume
        self._skip = 0  # the same, while that epoch runs
        if interval is not None:
            self.register_hook(_IterCheckpointHook(interval), priority="LOW")
        if stop_signal is not None:
            name = str(stop_signal).upper()
            signum = getattr(signal, name if name.startswith("SIG") else "SIG" + name, None)
            if not isinstance(signum, signal.Signals):
                raise ValueError(f"runner.stop_signal must name a signal, e.g. USR2, got {stop_signal!r}")
            self.register_hook(_StopOnSignalHook(signum), priority="LOWEST")

    @property
    def inner_iter(self):
        return self._inner_iter + self._skip

    def train(self, data_loader, **kwargs):
        skip, self._resume_skip = self._resume_skip, 0
        if skip:
            data_loader = _RestOfEpoch(data_loader, skip)
            self._skip = skip
        try:
            super().train(data_loader, **kwargs)
        finally:
            self._skip = 0
        self._drop_iter_checkpoints(covered_by_epoch=self.epoch)

    def resume(self, checkpoint, *args, **kwargs):
        super().resume(checkpoint, *args, **kwargs)
        # mmcv made the checkpoint's meta the runner's own, which later checkpoints copy: the mid-epoch position
        # must not travel into them.
        position = (self.meta or {}).pop(MID_EPOCH_META_KEY, None)
        if not position:
            return
        done = int(position["inner_iter"])
        trained_with = int(position.get("world_size") or self.world_size)
        if trained_with != self.world_size:
            # UniAD's group sampler hands each rank a contiguous block of a permutation padded to the world size:
            # with another world size, skipping K batches would skip samples never trained and repeat others.
            raise RuntimeError(
                f"{checkpoint} is a mid-epoch checkpoint of {trained_with} processes and this run has "
                f"{self.world_size}: resume from the last epoch_N.pth instead, or with {trained_with} processes"
            )
        self._resume_skip = done
        self.logger.info(
            "resuming inside epoch %d: skipping its first %d iterations, trained before the checkpoint",
            self.epoch + 1,
            self._resume_skip,
        )

    def save_iter_checkpoint(self, done):
        """Write ``epoch_{E}_iter_{done}.pth`` (rank 0), then drop older iteration checkpoints."""
        if self.rank != 0:
            return
        meta = {}
        for hook in self.hooks:
            if isinstance(hook, CheckpointHook):
                meta.update(hook.args.get("meta") or {})
        meta.update(self.meta or {})
        meta.update(epoch=self.epoch, iter=self.iter + 1)
        meta[MID_EPOCH_META_KEY] = dict(inner_iter=done, world_size=self.world_size)
        name = ITER_FILE.format(self.epoch + 1, done)
        path = osp.join(self.work_dir, name)
        partial = osp.join(self.work_dir, "." + name + ".part")
        try:
            save_checkpoint(self.model, partial, optimizer=self.optimizer, meta=meta)
            os.replace(partial, path)
        except BaseException:
            if osp.exists(partial):  # a full disk must not also leave a partial file behind
                os.remove(partial)
            raise
        for other in self._iter_checkpoints():
            if other[2] != path:
                os.remove(other[2])
        self.logger.info("saved %s (epoch %d, iteration %d of %d)", name, self.epoch + 1, done, len(self.data_loader))

    def _iter_checkpoints(self):
        found = []
        for name in os.listdir(self.work_dir):
            match = ITER_PATTERN.match(name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), osp.join(self.work_dir, name)))
        return found

    def _drop_iter_checkpoints(self, covered_by_epoch):
        """Remove iteration checkpoints of epochs up to ``covered_by_epoch`` once that epoch's file exists."""
        if self.rank != 0 or not osp.isfile(osp.join(self.work_dir, EPOCH_FILE.format(covered_by_epoch))):
            return
        for epoch, _, path in self._iter_checkpoints():
            if epoch <= covered_by_epoch:
                os.remove(path)
