"""The heavy libraries of the gate, the promotion and the publication (torch for checkpoints, matplotlib for the
report's plots), imported once by a worker before it forks its tasks (Celery's ``imports`` setting:
``uniad_airflow.celery_config.DEFAULT_WORKER``), so that each of those short tasks does not pay ~2 s for them.
Everything else imports them lazily: the DAG file and the light tasks never do."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402,F401


def _warm_up_plots() -> None:
    """Draw one tiny figure: fonts, text and tick machinery are loaded here, not again in every forked task."""
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([1, 2], [1, 2], marker="o")
    ax.set_yscale("log")
    ax.set_title("warm-up")
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


_warm_up_plots()
