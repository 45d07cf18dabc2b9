"""The health report of a stage: Markdown with a milestone table and findings, plus PNG plots.

Plots (x: global iteration, dashed lines at epoch boundaries): total loss, loss per task group, grad_norm, lr.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .analysis import Analysis

TASK_GROUPS = ("track", "map", "motion", "occ", "planning")


def _global_iters(train: list[dict], iters_per_epoch: int | None) -> list[float]:
    if iters_per_epoch:
        return [(r["epoch"] - 1) * iters_per_epoch + r["iter"] for r in train]
    # Without the epoch length, space each epoch's records evenly, which keeps boundaries in the right place.
    per_epoch: dict[int, int] = defaultdict(int)
    for r in train:
        per_epoch[r["epoch"]] = max(per_epoch[r["epoch"]], r["iter"])
    length = max(per_epoch.values(), default=1)
    return [(r["epoch"] - 1) * length + r["iter"] for r in train]


def group_losses(record: dict) -> dict[str, float]:
    """Sum of the loss keys of each UniAD task (prefix before the first dot); other prefixes keep their name."""
    groups: dict[str, float] = defaultdict(float)
    for key, value in record.items():
        if "loss" in key and key != "loss" and isinstance(value, (int, float)):
            groups[key.split(".", 1)[0] if "." in key else "other"] += value
    return dict(groups)


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def write_plots(train: list[dict], iters_per_epoch: int | None, out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    xs = _global_iters(train, iters_per_epoch)
    boundaries = [x for a, b, x in zip(train, train[1:], xs) if a["epoch"] != b["epoch"]]
    grouped = [group_losses(r) for r in train]
    groups = [g for g in TASK_GROUPS if any(g in row for row in grouped)]
    groups += sorted({g for row in grouped for g in row} - set(groups))
    series = [
        ("loss.png", "total loss", {"loss": [r.get("loss") for r in train]}, False),
        ("loss_by_task.png", "loss by task", {g: [row.get(g) for row in grouped] for g in groups}, False),
        ("grad_norm.png", "grad_norm (before clipping)", {"grad_norm": [r.get("grad_norm") for r in train]}, False),
        ("lr.png", "learning rate", {"lr": [r.get("lr") for r in train]}, True),
    ]
    written = []
    for name, label, lines, log_scale in series:
        if not any(v is not None for values in lines.values() for v in values):
            continue
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        for key, values in lines.items():
            points = [(x, v) for x, v in zip(xs, values) if isinstance(v, (int, float))]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=key, linewidth=1.4)
        for x in boundaries:
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.7, alpha=0.7)
        if log_scale:
            ax.set_yscale("log")
            for axis_format in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                axis_format(FormatStrFormatter("%.1e"))  # short labels: the fixed left margin fits them
        ax.set_title(f"{title}: {label}")
        ax.set_xlabel("iteration (dashed: epoch boundaries)")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8, ncol=min(len(lines), 5))
        # Fixed margins: tight_layout measured every label and took half of the gate's time.
        fig.subplots_adjust(left=0.11, right=0.98, top=0.89, bottom=0.15)
        path = out_dir / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def write_metric_plot(evaluations: list[dict], headline: list[str], out_dir: Path, title: str) -> Path | None:
    """``metrics.png``: one small curve per headline metric over the evaluated epochs."""
    shown = [m for m in headline if any(m in e["values"] for e in evaluations)]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 2.8), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], shown):
        points = [(e["epoch"], e["values"][metric]) for e in evaluations if metric in e["values"]]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linewidth=1.4)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: evaluations", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.8, bottom=0.18, wspace=0.35)
    path = out_dir / "metrics.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def metrics_section(evaluations: list[dict], references: dict[str, float] | None, headline: list[str]) -> list[str]:
    """Markdown: a table per evaluation (newest first, headline metrics first), the published reference beside
    each metric it has one for."""
    if not evaluations:
        return ["No evaluation in the logs (validation off, or the stage has not reached an evaluated epoch)."]
    lines = []
    for evaluation in reversed(evaluations):
        values = evaluation["values"]
        keys = [k for k in headline if k in values] + [k for k in values if k not in headline]
        lines += [f"### epoch {evaluation['epoch']}", ""]
        if references:
            lines += ["| metric | value | UniAD reference |", "|---|---|---|"]
            lines += [f"| {k} | {_fmt(values[k])} | {_fmt(references.get(k, '-'))} |" for k in keys]
        else:
            lines += ["| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(values[k])} |" for k in keys]
        lines.append("")
    return lines


def write_report(
    analysis: Analysis,
    records: list[dict],
    out_dir: str | Path,
    title: str = "training",
    *,
    headline: list[str] = (),
    references: dict[str, float] | None = None,
) -> Path:
    """Write ``report.md`` and the PNGs into ``out_dir``; return the Markdown path. ``headline``: the metrics
    plotted over the evaluations; ``references``: published values shown beside them (profile ``uniad``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r.get("mode") == "train"]
    plots = write_plots(train, analysis.latest.get("iters_per_epoch"), out_dir, title) if train else []
    metric_plot = write_metric_plot(analysis.evaluations, list(headline), out_dir, title)
    if metric_plot is not None:
        plots.append(metric_plot)
    latest = analysis.latest
    lines = [
        f"# {title}: {analysis.verdict.upper()}",
        "",
        f"- progress: epoch {latest.get('epoch')}"
        + (f"/{analysis.total_epochs}" if analysis.total_epochs else "")
        + f", iter {latest.get('iter')}"
        + (f"/{latest['iters_per_epoch']}" if latest.get("iters_per_epoch") else "")
        + (f" ({analysis.progress:.0%} of the stage)" if analysis.progress is not None else ""),
        f"- total loss: {_fmt(analysis.loss.get('first'))} -> {_fmt(analysis.loss.get('latest'))}"
        + (f" ({analysis.loss['reduction']:.0%} reduction)" if analysis.loss.get("reduction") is not None else ""),
        f"- lr: peak {_fmt(analysis.lr.get('peak'))}, latest {_fmt(analysis.lr.get('latest'))}",
        f"- grad_norm: latest {_fmt(analysis.grad_norm.get('latest'))}, median {_fmt(analysis.grad_norm.get('median'))}",
        f"- records: {analysis.records}",
        "",
        "## Findings",
        "",
    ]
    if analysis.findings:
        lines += ["| severity | code | where | message |", "|---|---|---|---|"]
        for f in analysis.findings:
            where = f"epoch {f.epoch} iter {f.iter}" if f.epoch is not None else "-"
            lines.append(f"| {f.severity} | {f.code} | {where} | {f.message.replace('|', '/')} |")
    else:
        lines.append("None: no NaN/Inf, spikes, explosions, divergence, plateau, stuck components or lr mismatches.")
    lines += ["", "## Metrics", ""] + metrics_section(analysis.evaluations, references, list(headline))
    lines += [
        "",
        "## Milestones",
        "",
        "| point | epoch | iter | total loss | grad_norm | lr |",
        "|---|---|---|---|---|---|",
    ]
    for m in analysis.milestones:
        lines.append(
            f"| {m['point']} | {m['epoch']} | {m['iter']} | {_fmt(m['loss'])} | {_fmt(m['grad_norm'])} | {_fmt(m['lr'], 3)} |"
        )
    if train:
        first, last = group_losses(train[0]), group_losses(train[-1])
        lines += ["", "## Loss by task (sum of its loss keys)", "", "| task | first | latest |", "|---|---|---|"]
        lines += [f"| {g} | {_fmt(first.get(g))} | {_fmt(last.get(g))} |" for g in last]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Components", "", "| key | first | latest |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['first'])} | {_fmt(v['latest'])} |" for k, v in analysis.components.items()]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
