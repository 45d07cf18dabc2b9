"""Messages that reach people: a run's end, and alerts while a stage goes wrong.

One Airflow connection says where they go: ``uniad_notify`` (``UNIAD_NOTIFY_CONN_ID`` renames it).

- An apprise connection (Airflow's apprise provider): Slack, Teams, Matrix, email, webhooks and more, from the list
  of URLs in its extra::

      airflow connections add uniad_notify --conn-type apprise \\
          --conn-extra '{"config": [{"path": "slack://TokenA/TokenB/TokenC/#ml-oncall"}, {"path": "mailtos://..."}]}'

- An SMTP connection (host, port, login, password) whose extra names the recipients::

      airflow connections add uniad_notify --conn-type smtp --conn-host smtp.example.com --conn-port 587 \\
          --conn-login bot@example.com --conn-password ... --conn-extra '{"to": ["ml-oncall@example.com"]}'

Without it nothing is sent, and the log says so. Alerts (``StageAlerts``) come from the triggers that follow a stage
(health findings: warnings such as a head's loss that became zero or a loss spike, errors before the stage is
stopped; a stall; a Slurm job pending too long), from the training task (out of memory) and from the gate (a metric
requirement missed, its warnings such as a plateau). Each names the stage, the numbers and the dashboard link; at most
one message per kind per stage of a run, across retries and triggerer restarts: the stage's work dir keeps what was
sent in ``alerts.jsonl``.
"""

from __future__ import annotations

import html
import json
import logging
import time
from pathlib import Path
from urllib.parse import quote

from uniad.workdir import WorkDir
from uniad_airflow.names import DAG_ID, dashboard_url
from uniad_airflow.settings import notify_conn_id

log = logging.getLogger(__name__)


class NotConfigured(Exception):
    """No connection to send through, or one that names no one."""


def _base_url() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="").rstrip("/")


def dashboard_link(run_id: str) -> str:
    """The run's page in the training dashboard, absolute where ``[api] base_url`` is set."""
    return _base_url() + dashboard_url(run_id)


def airflow_run_link(run_id: str) -> str:
    """The run's page in Airflow's UI, absolute where ``[api] base_url`` is set."""
    return f"{_base_url()}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}"


def deliver(title: str, html_body: str, *, failure: bool, conn_id: str | None = None) -> str:
    """Send one message through the notification connection: to whom it went. Raises ``NotConfigured`` without a
    usable connection and ``RuntimeError`` when a target refused it."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = conn_id or notify_conn_id()
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise NotConfigured(f"no connection {conn_id!r}") from None
    if conn.conn_type == "apprise":
        import apprise
        from airflow.providers.apprise.hooks.apprise import AppriseHook

        targets = apprise.Apprise()
        try:
            AppriseHook(apprise_conn_id=conn_id).set_config_from_conn(conn=conn, apprise_obj=targets)
        except (KeyError, ValueError) as exc:
            raise NotConfigured(f'connection {conn_id!r} has no usable "config" in its extra: {exc}') from exc
        if not len(targets):
            raise NotConfigured(f"connection {conn_id!r} names no apprise URL apprise can use")
        kind = apprise.NotifyType.FAILURE if failure else apprise.NotifyType.WARNING
        if not targets.notify(body=html_body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.HTML):
            raise RuntimeError(f"an apprise target of connection {conn_id!r} did not take the message (see the log)")
        return f"{len(targets)} apprise target(s) of connection {conn_id!r}"
    to = conn.extra_dejson.get("to")
    if not to:
        raise NotConfigured(f'connection {conn_id!r} has no "to" in its extra')
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as smtp:
        smtp.send_email_smtp(
            to=to,
            subject=title,
            html_content=html_body,
            from_email=conn.extra_dejson.get("from_email") or conn.login or "uniad-pipeline@localhost",
        )
    return ", ".join(to) if isinstance(to, list) else str(to)


class StageAlerts:
    """The alerts of one stage of one run, at most one per kind: ``alert`` is safe to call on every poll."""

    def __init__(self, work_dir: str | Path, run_id: str, stage: str, conn_id: str | None = None) -> None:
        self.path = WorkDir(Path(work_dir)).alerts
        self.run_id, self.stage, self.conn_id = run_id, stage, conn_id

    def sent(self) -> dict[str, dict]:
        """The alerts of this stage and run so far, by kind (whether or not they reached anyone)."""
        if not self.path.exists():
            return {}
        said = {}
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a crash: the rest still count
                continue
            if record.get("run_id") == self.run_id and record.get("stage") == self.stage:
                said.setdefault(record.get("kind"), record)
        return said

    def alert(self, kind: str, message: str, *, failure: bool = False, epoch: int | None = None, it=None) -> str | None:
        """Tell people ``message`` unless this stage's ``kind`` was told before: what became of it, for the log
        (None: told before). Never raises: an alert that cannot go out must not stop a stage."""
        if kind in self.sent():
            return None
        where = f" at epoch {epoch} iter {it}" if epoch is not None else ""
        title = f"[UniAD] {self.stage} of {self.run_id}: {kind}{where}"
        link = dashboard_link(self.run_id)
        body = "<br>".join(
            [
                f"<b>{html.escape(self.stage)}</b> of run <b>{html.escape(self.run_id)}</b>: "
                f"<b>{html.escape(kind)}</b>{where}.",
                html.escape(message),
                f'Curves, findings and progress: <a href="{html.escape(link)}">{html.escape(link)}</a>',
            ]
        )
        record = {"run_id": self.run_id, "stage": self.stage, "kind": kind, "time": time.time(), "message": message}
        try:
            record["sent_to"] = deliver(title, body, failure=failure, conn_id=self.conn_id)
            outcome = f"alert {kind} sent to {record['sent_to']}"
        except NotConfigured as exc:
            record["not_sent"] = str(exc)
            outcome = f"alert {kind} not sent: {exc}"
        except Exception as exc:  # a target down or refusing: said, and the stage goes on
            record["not_sent"] = f"delivery failed: {exc}"
            outcome = f"alert {kind} not sent: delivery failed: {exc}"
        try:
            with open(self.path, "a") as alerts:
                alerts.write(json.dumps(record) + "\n")
        except OSError as exc:
            outcome += f" (not recorded in {self.path}: {exc}; it may be sent again)"
        return outcome
