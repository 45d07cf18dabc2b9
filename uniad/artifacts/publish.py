"""Publish a verified checkpoint atomically, with provenance.

``promote_checkpoint`` resolves ``latest.pth`` (a symlink to the newest ``epoch_N.pth``), verifies the file for its
stage, copies it to a temporary file beside the target while hashing, fsyncs, and renames it into place, so the
target is either the old good file or the new verified one, never a partial copy. A provenance sidecar records
where it came from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from ..metrics import finite, lower_is_better
from ..workdir import provenance_path
from .checkpoints import CHUNK, inspect_checkpoint

logger = logging.getLogger(__name__)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(target: Path, write) -> None:
    """Call ``write(handle)`` on a temp file beside ``target``, fsync it, and rename it over ``target``."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _identity(path: Path) -> tuple[str, int, int, int]:
    """What changes when a checkpoint is rewritten or replaced: where the link points, inode, size, mtime."""
    resolved = path.resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_ino, stat.st_size, stat.st_mtime_ns


def promote_checkpoint(
    src: str | Path,
    dst: str | Path,
    stage: str | None = "stage1",
    expect_epoch: int | None = None,
    *,
    extra: dict | None = None,
) -> dict:
    """Verify ``src`` for ``stage`` and publish it atomically at ``dst`` with a provenance sidecar (plus ``extra``
    fields, e.g. the model's metrics and run id)."""
    src, dst = Path(src), Path(dst)
    # Two passes over the file, like `sha256sum && cp`: the verifying load, then the copy, hashed as it goes.
    before = _identity(src)
    report = inspect_checkpoint(src, stage=stage, expect_epoch=expect_epoch, sha256=False)
    if not report.valid:
        raise CheckpointError(
            f"refusing to promote {src}: " + "; ".join(report.problems) + f". {dst} was left unchanged."
        )
    resolved = Path(report.resolved_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()

    def copy(handle) -> None:
        with open(resolved, "rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                handle.write(chunk)
        if _identity(src) != before:
            raise CheckpointError(
                f"{resolved} changed while it was being verified and promoted (size or modification time moved); "
                f"is training still writing it? {dst} was left unchanged."
            )

    try:
        _atomic_write(dst, copy)
    except OSError as exc:
        raise CheckpointError(
            f"could not write {dst}: {exc} (disk full, quota, or no write permission in {dst.parent}?). "
            f"{dst} was left unchanged."
        ) from exc
    report.sha256 = digest.hexdigest()
    provenance = {
        "path": str(dst.resolve()),
        "source": str(src),
        "source_resolved": str(resolved),
        "sha256": report.sha256,
        "size_bytes": report.size_bytes,
        "stage": stage,
        "epoch": report.epoch,
        "iter": report.iter,
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    _atomic_write(provenance_path(dst), lambda h: h.write((json.dumps(provenance, indent=2) + "\n").encode()))
    logger.info("promoted %s (epoch %s, sha256 %s) to %s", resolved, report.epoch, report.sha256[:12], dst)
    return provenance


def read_provenance(published: str | Path) -> dict | None:
    """The provenance sidecar of a published checkpoint, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(provenance_path(published).read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class ChampionRule:
    """Champion/challenger on one metric: the challenger is published unless it is worse than the champion by more
    than ``tolerance`` (for errors, distances and collisions lower is better, for the rest higher)."""

    metric: str
    tolerance: float = 0.0

    def decide(self, challenger: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
        if self.metric not in challenger or not math.isfinite(challenger[self.metric]):
            raise CheckpointError(
                f"the challenger has no finite {self.metric} to compare (it has {', '.join(sorted(challenger)) or 'no metrics'}): "
                "set champion_metric to one the final evaluation reports"
            )
        new, old = challenger[self.metric], champion.get(self.metric, math.nan)
        lower = lower_is_better(self.metric)
        if not math.isfinite(old):
            return True, f"{self.metric}: challenger {new:.4g}, the champion has none: publishing the challenger"
        worse_by = (new - old) if lower else (old - new)
        direction = "lower" if lower else "higher"
        verdict = worse_by <= self.tolerance
        return verdict, (
            f"{self.metric} ({direction} is better): challenger {new:.4g}, champion {old:.4g}, tolerance "
            f"{self.tolerance:g}: " + ("publishing the challenger" if verdict else "keeping the champion")
        )


def publish_model(
    candidate: str | Path,
    metrics: dict[str, float],
    target: str | Path,
    rule: ChampionRule,
    *,
    expect_epoch: int | None = None,
    run_id: str | None = None,
    score_champion: Callable[[Path], dict[str, float]] | None = None,
    champion_metrics: dict[str, float] | None = None,
) -> dict:
    """Publish the stage-2 checkpoint ``candidate`` at ``target`` when it is not worse than the champion there.

    The champion's metrics are ``champion_metrics`` (the model registry's champion) or come from its provenance
    sidecar; a champion without them (published by hand) is scored with ``score_champion`` (``python -m uniad
    evaluate``) first. Returns ``published``, the ``comparison`` and the provenance of what is at ``target``
    afterwards."""
    target = Path(target)
    if target.exists():
        champion = read_provenance(target) or {}
        champion_metrics = champion_metrics or champion.get("metrics")
        if not champion_metrics:
            if score_champion is None:
                raise CheckpointError(f"the champion {target} has no recorded metrics and cannot be scored here")
            logger.info("the champion %s has no recorded metrics: scoring it", target)
            champion_metrics = finite(score_champion(target))  # tables print nan for empty classes
        publish, comparison = rule.decide(metrics, champion_metrics)
        if not publish:
            return {"published": False, "comparison": comparison, "champion": {**champion, "metrics": champion_metrics}}
    else:
        comparison = f"no champion at {target}: publishing the first model"
    provenance = promote_checkpoint(
        candidate, target, stage="stage2", expect_epoch=expect_epoch, extra={"metrics": metrics, "run_id": run_id}
    )
    return {"published": True, "comparison": comparison, "champion": provenance}
