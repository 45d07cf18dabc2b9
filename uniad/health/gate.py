"""The gate after each training stage: training health first, then the checkpoint.

    validate_stage(WorkDir(path), "stage1", expect_epoch=6)   # raises GateFailed, or returns what it checked

The health report (``report.md`` and plots) is written into ``<work_dir>/health/`` whether the gate passes or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..artifacts.checkpoints import inspect_checkpoint
from ..errors import GateFailed
from ..metrics import HEADLINE, Requirement, finite
from ..workdir import JSON_LOGS, WorkDir
from .analysis import INFO, analyze_log
from .monitor import Finding
from .report import write_report

logger = logging.getLogger(__name__)


def validate_stage(
    work_dir: WorkDir,
    stage: str,
    expect_epoch: int,
    strict: bool = False,
    *,
    requirements: Sequence[Requirement] = (),
    evaluated: bool = True,
    references: dict[str, float] | None = None,
    on_findings: Callable[[list[Finding]], None] | None = None,
) -> dict:
    """``requirements`` on the final evaluation's metrics; ``evaluated``: validation was on, so the final epoch
    must have been evaluated; ``references``: published values for the report (profile uniad); ``on_findings``
    gets the analysis' findings before the verdict (the pipeline alerts people to them)."""
    # A fresh run moved older runs' files aside, so these are this run's attempts.
    logs = work_dir.json_logs()
    if not logs:
        raise GateFailed(f"no {JSON_LOGS} in {work_dir.path}: did the {stage} training run write its logs there?")
    log = logs[-1]
    analysis, rows, _ = analyze_log(
        logs,
        outputs=work_dir.outputs(),
        total_epochs=expect_epoch,
        requirements=requirements,
        expect_evaluation=evaluated,
    )
    records = [rows.record(i) for i in range(len(rows))]  # what the analysis kept, superseded attempts excluded
    attempts = f", {len(logs)} attempts" if len(logs) > 1 else ""
    report = write_report(
        analysis,
        records,
        work_dir.health_dir,
        title=f"{stage} ({log.name}{attempts})",
        headline=HEADLINE.get(stage, []),
        references=references,
    )
    logger.info("%s health: %s; report %s", stage, analysis.verdict, report)
    for finding in analysis.findings:
        where = f" (epoch {finding.epoch} iter {finding.iter})" if finding.epoch is not None else ""
        logger.info("[%s] %s%s: %s", finding.severity, finding.code, where, finding.message)
    if on_findings is not None:
        on_findings(analysis.findings)
    checkpoint = inspect_checkpoint(work_dir.latest, stage=stage, expect_epoch=expect_epoch)
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
        "logs": [str(path) for path in logs],
        "progress": analysis.progress,
        "findings": analysis.to_dict()["findings"],
        # The final evaluation's numbers (nan, normal for some classes in nuScenes, is no number: the report has it).
        "metrics": {**analysis.metrics, "values": finite(analysis.metrics["values"])} if analysis.metrics else None,
        "checkpoint": checkpoint.to_dict(),
    }
