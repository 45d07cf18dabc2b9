"""UniAD's ``DistributedGroupSampler`` (projects/mmdet3d_plugin/datasets/samplers/group_sampler.py), same order.

Per epoch: each aspect-ratio group (``dataset.flag``) is shuffled with a generator seeded by ``seed + epoch`` and
padded to a multiple of ``samples_per_gpu x world size``; the batches are shuffled; and each rank takes one
contiguous block. So which samples a rank sees depends on the world size, as in UniAD: a mid-epoch resume with
another process count would skip the wrong samples, and the pipeline refuses it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Sampler


class DistributedGroupSampler(Sampler):
    def __init__(self, dataset, samples_per_gpu: int = 1, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        self.dataset = dataset
        self.samples_per_gpu = samples_per_gpu
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.seed = seed if seed is not None else 0
        self.flag = dataset.flag
        self.group_sizes = np.bincount(self.flag)
        self.num_samples = sum(
            int(math.ceil(size / samples_per_gpu / num_replicas)) * samples_per_gpu for size in self.group_sizes
        )
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.epoch + self.seed)
        indices: list[int] = []
        for group, size in enumerate(self.group_sizes):
            if size == 0:
                continue
            members = np.where(self.flag == group)[0]
            members = members[list(torch.randperm(int(size), generator=g).numpy())].tolist()
            block = self.samples_per_gpu * self.num_replicas
            extra = int(math.ceil(size / block)) * block - len(members)
            padded = members.copy()
            for _ in range(extra // size):
                padded.extend(members)
            padded.extend(members[: extra % size])
            indices.extend(padded)
        assert len(indices) == self.total_size
        batches = torch.randperm(len(indices) // self.samples_per_gpu, generator=g).tolist()
        indices = [indices[j] for i in batches for j in range(i * self.samples_per_gpu, (i + 1) * self.samples_per_gpu)]
        offset = self.num_samples * self.rank
        return iter(indices[offset : offset + self.num_samples])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
