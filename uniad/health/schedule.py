"""What a stage's mmcv config says about its schedule, parsed from the config text in the log's meta line."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_CONFIG_NUMBER = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"


def _config_value(config: str, pattern: str) -> float | None:
    match = re.search(pattern, config)
    return float(match.group(1)) if match else None


@dataclass
class ScheduleConfig:
    """What mmcv's config says about the schedule (parsed from the pretty_text in the log's meta line)."""

    lr: float | None = None
    policy: str | None = None
    warmup: str | None = None
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    min_lr_ratio: float | None = None
    max_epochs: int | None = None
    past_traj_disabled: bool = False

    @classmethod
    def from_text(cls, config: str | None) -> ScheduleConfig:
        if not config:
            return cls()
        optimizer = re.search(r"optimizer\s*=\s*dict\((.*?)\)\s*$", config, re.S | re.M)
        lr_config = re.search(r"lr_config\s*=\s*dict\((.*?)\)\s*$", config, re.S | re.M)
        lr_text = lr_config.group(1) if lr_config else ""
        policy = re.search(r"policy\s*=\s*['\"](\w+)['\"]", lr_text)
        warmup = re.search(r"warmup\s*=\s*['\"](\w+)['\"]", lr_text)
        max_epochs = _config_value(config, r"max_epochs\s*=\s*(\d+)")
        return cls(
            lr=_config_value(optimizer.group(1), rf"\blr\s*=\s*{_CONFIG_NUMBER}") if optimizer else None,
            policy=policy.group(1) if policy else None,
            warmup=warmup.group(1) if warmup else None,
            warmup_iters=int(_config_value(lr_text, rf"warmup_iters\s*=\s*{_CONFIG_NUMBER}") or 0),
            warmup_ratio=_config_value(lr_text, rf"warmup_ratio\s*=\s*{_CONFIG_NUMBER}") or 0.1,
            min_lr_ratio=_config_value(lr_text, rf"min_lr_ratio\s*=\s*{_CONFIG_NUMBER}"),
            max_epochs=int(max_epochs) if max_epochs else None,
            past_traj_disabled=bool(re.search(r"loss_past_traj_weight\s*=\s*0(\.0*)?\b", config)),
        )

    def expected_lr(self, epoch: int, inner_iter: int, iters_per_epoch: int | None) -> float | None:
        """mmcv's CosineAnnealing (by epoch) with linear warmup by iteration, for the iteration a record logs."""
        if self.lr is None or self.policy != "CosineAnnealing" or self.max_epochs is None:
            return None
        target = self.lr * (self.min_lr_ratio if self.min_lr_ratio is not None else 0.0)
        progress = (epoch - 1) / self.max_epochs
        regular = target + 0.5 * (self.lr - target) * (1 + math.cos(math.pi * progress))
        if self.warmup == "linear" and self.warmup_iters:
            if iters_per_epoch is None and epoch > 1:
                return None
            global_iter = (epoch - 1) * (iters_per_epoch or 0) + inner_iter - 1
            if global_iter < self.warmup_iters:
                k = (1 - global_iter / self.warmup_iters) * (1 - self.warmup_ratio)
                return regular * (1 - k)
        elif self.warmup is not None:
            return None  # other warmups are not modelled
        return regular
