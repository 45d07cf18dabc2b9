"""The registries configs build the mini UniAD's model and datasets from (``type="MiniUniAD"``, ...)."""

from __future__ import annotations

from .compat import ensure_torchvision_importable

ensure_torchvision_importable()

from mmcv.utils import Registry  # noqa: E402

from .data import MiniDriveDataset  # noqa: E402
from .model import MiniUniAD  # noqa: E402

MODELS = Registry("mini_uniad_models")
DATASETS = Registry("mini_uniad_datasets")
MODELS.register_module(module=MiniUniAD)
DATASETS.register_module(module=MiniDriveDataset)
