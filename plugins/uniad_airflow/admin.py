"""Create (or keep) the first Admin of the FAB auth manager from a deployment secret, never from a file or argv.

    UNIAD_ADMIN_PASSWORD=... PYTHONPATH=plugins python -m uniad_airflow.admin   # after `airflow db migrate`

``UNIAD_ADMIN_PASSWORD`` (required; compose passes ``AIRFLOW_ADMIN_PASSWORD`` from the deployment's secrets),
``UNIAD_ADMIN_USER`` (default ``admin``), ``UNIAD_ADMIN_EMAIL``. An existing user of that name is left as it is:
passwords are changed through Airflow's UI or ``airflow users reset-password``, not by redeploying. Nothing here
prints or logs the password; it is not on any command line either, where ``ps`` would show it.
"""

from __future__ import annotations

import os
import sys


def ensure_admin() -> str:
    """Create the admin if missing; return what was done, for the deploy log."""
    password = os.environ.get("UNIAD_ADMIN_PASSWORD", "")
    username = os.environ.get("UNIAD_ADMIN_USER", "admin")
    if len(password) < 12:
        raise SystemExit(
            "UNIAD_ADMIN_PASSWORD must hold the first admin's password (12 characters or more), from your secret "
            "store; e.g. UNIAD_ADMIN_PASSWORD=$(cat /run/secrets/airflow_admin_password)"
        )
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        security = appbuilder.sm
        if security.find_user(username=username):
            return f"admin user {username!r} exists; left unchanged"
        role = security.find_role("Admin")
        email = os.environ.get("UNIAD_ADMIN_EMAIL", f"{username}@localhost")
        if not security.add_user(username, "Airflow", "Admin", email, role, password):
            raise SystemExit(f"could not create the admin user {username!r} (see the log above)")
    return f"created admin user {username!r} with role Admin"


if __name__ == "__main__":
    print(ensure_admin(), file=sys.stderr)
