"""Run notifications: an email when a run succeeds or fails, sent through the smtp provider's notifier.

Configured by one Airflow connection, ``uniad_notify`` (``UNIAD_NOTIFY_CONN_ID`` renames it): an SMTP connection
(host, port, login, password) whose extra names the recipients, e.g.

    airflow connections add uniad_notify --conn-type smtp --conn-host smtp.example.com --conn-port 587 \\
        --conn-login bot@example.com --conn-password ... --conn-extra '{"to": ["ml-oncall@example.com"]}'

Without that connection nothing is sent, and the callback says so in its log.
"""

from __future__ import annotations

import html
import logging
import os
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier

from uniad_airflow.names import dashboard_url

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)
DEFAULT_CONN_ID = "uniad_notify"


class RunOutcomeNotifier(BaseNotifier):
    """Email ``outcome`` ("succeeded" or "failed") of a run of the DAG, with the failing task and the dashboard."""

    template_fields = ()

    def __init__(self, *, outcome: str, conn_id: str | None = None) -> None:
        super().__init__()
        self.outcome = outcome
        self.conn_id = conn_id or os.environ.get("UNIAD_NOTIFY_CONN_ID", DEFAULT_CONN_ID)

    def render_template_fields(self, context: Context, jinja_env=None) -> None:
        """Nothing to render: the message is built in ``notify``. (Under ``airflow dags test`` the callback's
        context holds a serialized DAG, which has no template environment to render with.)"""

    def notify(self, context: Context) -> None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            log.info("no connection %r: no notification sent for this run", self.conn_id)
            return
        to = conn.extra_dejson.get("to")
        if not to:
            log.warning('connection %r has no "to" in its extra: no notification sent', self.conn_id)
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        dag_id = context["dag"].dag_id
        run_id = context["run_id"]
        ti = context.get("ti")
        lines = [f"Run <b>{html.escape(run_id)}</b> of <b>{html.escape(dag_id)}</b> {self.outcome}."]
        if self.outcome == "failed" and ti is not None:
            lines.append(f"Failed task: <b>{html.escape(ti.task_id)}</b> (try {ti.try_number}).")
        if context.get("reason"):
            lines.append(f"Reason: {html.escape(str(context['reason']))}.")
        from airflow.configuration import conf

        link = conf.get("api", "base_url", fallback="").rstrip("/") + dashboard_url(run_id)
        lines.append(f'Curves, findings and checkpoints: <a href="{html.escape(link)}">{html.escape(link)}</a>')
        SmtpNotifier(
            to=to,
            from_email=conn.extra_dejson.get("from_email") or conn.login or "uniad-pipeline@localhost",
            subject=f"[UniAD] {dag_id} {run_id} {self.outcome}",
            html_content="<br>".join(lines),
            smtp_conn_id=self.conn_id,
        ).notify(context)
        log.info("sent the %s notification for %s to %s", self.outcome, run_id, to)
