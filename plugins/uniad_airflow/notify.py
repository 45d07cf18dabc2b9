"""Run notifications: a message when a run succeeds or fails, through the pipeline's notification connection (an
apprise or an SMTP connection, ``uniad_airflow.alerts``). Without that connection nothing is sent, and the callback
says so in its log.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)


class RunOutcomeNotifier(BaseNotifier):
    """Tell ``outcome`` ("succeeded" or "failed") of a run of the DAG, with the failing task and the dashboard."""

    template_fields = ()

    def __init__(self, *, outcome: str, conn_id: str | None = None) -> None:
        super().__init__()
        self.outcome = outcome
        self.conn_id = conn_id

    def render_template_fields(self, context: Context, jinja_env=None) -> None:
        """Nothing to render: the message is built in ``notify``. (Under ``airflow dags test`` the callback's
        context holds a serialized DAG, which has no template environment to render with.)"""

    def notify(self, context: Context) -> None:
        from uniad_airflow.alerts import NotConfigured, dashboard_link, deliver

        dag_id = context["dag"].dag_id
        run_id = context["run_id"]
        ti = context.get("ti")
        lines = [f"Run <b>{html.escape(run_id)}</b> of <b>{html.escape(dag_id)}</b> {self.outcome}."]
        if self.outcome == "failed" and ti is not None:
            lines.append(f"Failed task: <b>{html.escape(ti.task_id)}</b> (try {ti.try_number}).")
        if context.get("reason"):
            lines.append(f"Reason: {html.escape(str(context['reason']))}.")
        link = dashboard_link(run_id)
        lines.append(f'Curves, findings and checkpoints: <a href="{html.escape(link)}">{html.escape(link)}</a>')
        title = f"[UniAD] {dag_id} {run_id} {self.outcome}"
        try:
            sent_to = deliver(title, "<br>".join(lines), failure=self.outcome == "failed", conn_id=self.conn_id)
        except NotConfigured as exc:
            log.info("%s: no notification sent for this run", exc)
            return
        log.info("sent the %s notification for %s to %s", self.outcome, run_id, sent_to)
