"""The gate after each training stage: training health first, then the checkpoint.

    validate_stage(work_dir, "stage1", expect_epoch=6)   # raises GateFailed, or returns what it checked

The health report (``report.md`` and plots) is written into ``<work_dir>/health/`` whether the gate passes or not.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .checkpoints import inspect_checkpoint
from .errors import GateFailed
from .health import INFO, analyze_log
from .logs import latest_json_log, read_log
from .report import write_report

logger = logging.getLogger(__name__)


def validate_stage(work_dir: str | Path, stage: str, expect_epoch: int, strict: bool = False) -> dict:
    work_dir = Path(work_dir)
    log = latest_json_log(work_dir)
    if log is None:
        raise GateFailed(f"no *.log.json in {work_dir}: did the {stage} training run write its logs there?")
    analysis, _ = analyze_log(log, total_epochs=expect_epoch)
    report = write_report(analysis, read_log(log)[0], work_dir / "health", title=f"{stage} ({log.name})")
    logger.info("%s health: %s; report %s", stage, analysis.verdict, report)
    for finding in analysis.findings:
        where = f" (epoch {finding.epoch} iter {finding.iter})" if finding.epoch is not None else ""
        logger.info("[%s] %s%s: %s", finding.severity, finding.code, where, finding.message)
    checkpoint = inspect_checkpoint(work_dir / "latest.pth", stage=stage, expect_epoch=expect_epoch)
    for line in checkpoint.summary().splitlines():
        logger.info("%s", line)
    if analysis.failed(strict=strict):
        reasons = "; ".join(f.message for f in analysis.findings if f.severity != INFO)
        qualifier = " (strict: warnings fail too)" if analysis.verdict == "warning" else ""
        raise GateFailed(f"{stage} training is {analysis.verdict}{qualifier}: {reasons}. Report: {report}")
    if not checkpoint.valid:
        raise GateFailed(f"{stage} checkpoint rejected: " + "; ".join(checkpoint.problems))
    return {
        "stage": stage,
        "verdict": analysis.verdict,
        "report": str(report),
        "log": str(log),
        "progress": analysis.progress,
        "findings": analysis.to_dict()["findings"],
        "checkpoint": checkpoint.to_dict(),
    }
