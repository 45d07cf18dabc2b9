"""The domain package never imports Airflow, and the DAG file imports nothing heavy at parse time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import REPO, airflow_env


def imported_modules(code: str, full: bool = False, env: dict | None = None) -> set[str]:
    """The modules ``code`` imports (top-level packages unless ``full``)."""
    names = "m" if full else "m.split('.')[0]"
    probe = code + f"\nimport sys; print(' '.join(sorted({names} for m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_uniad_package_does_not_import_airflow():
    # Every module of the package, except the training-side ones that only import inside UniAD's interpreter.
    names = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / "uniad").rglob("*.py")
        if "skeleton" not in path.parts and path.parent.name != "trainside" and path.name != "__main__.py"
    )
    modules = imported_modules("import " + ", ".join(names))
    assert "uniad" in modules and "mmcv" in modules  # the probe really imported the trainer
    assert "airflow" not in modules


def test_dag_file_parse_imports_nothing_heavy(tmp_path):
    """At parse time the DAG file takes the parameter vocabulary (a leaf), the operators and the names, and nothing
    of the launching, storage, metrics or health code, nor torch and friends (parse cost: make bench). In a home
    with the pipeline's cluster policy installed, as every shipped deployment has: Airflow itself imports it."""
    env = {**os.environ, **airflow_env(tmp_path)}
    subprocess.run([sys.executable, "-m", "uniad_airflow.policy"], env=env, check=True, capture_output=True)
    modules = imported_modules(
        f"import runpy, sys; sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        f"runpy.run_path({str(REPO / 'dags/uniad_e2e_training.py')!r})",
        full=True,
        env=env,
    )
    assert "airflow.sdk" in modules
    assert not {"torch", "mmcv", "numpy", "boto3", "matplotlib"} & {m.split(".")[0] for m in modules}
    ours = {m for m in modules if m.split(".")[0] in ("uniad", "uniad_airflow")}
    # provider_info: Airflow's providers manager reads every installed provider's entry point.
    assert ours - {"uniad_airflow.provider_info"} == {
        "uniad",
        "uniad.errors",
        "uniad.vocabulary",
        "uniad.run",
        "uniad.run.params",
        "uniad_airflow",
        "uniad_airflow.names",
        "uniad_airflow.settings",
        "uniad_airflow.notify",
        "uniad_airflow.operators",
        "uniad_airflow.policy",  # from airflow_local_settings, by Airflow's own start
    }


def test_the_installed_package_registers_its_plugin_and_provider_info():
    """``pip install .`` registers the plugin through its entry point (the plugins folder's .airflowignore keeps the
    folder scan from registering it twice) and the provider info Airflow's schema accepts."""
    import json
    from importlib.metadata import entry_points

    import jsonschema
    from airflow.plugins_manager import AirflowPlugin

    (plugin,) = [e for e in entry_points(group="airflow.plugins") if e.value.startswith("uniad_airflow.")]
    assert plugin.name == "uniad_dashboard" and issubclass(plugin.load(), AirflowPlugin)
    (provider,) = [e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("uniad_airflow.")]
    info = provider.load()()
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    assert info["package-name"] == "uniad-pipeline"
    assert "uniad_airflow/" in (REPO / "plugins/.airflowignore").read_text().split()
