"""The domain package never imports Airflow, and the DAG file imports nothing heavy at parse time."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def imported_modules(code: str) -> set[str]:
    probe = code + "\nimport sys; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
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


def test_dag_file_parse_imports_no_torch_or_mmcv():
    modules = imported_modules(
        f"import runpy, sys; sys.path.insert(0, {str(REPO / 'plugins')!r}); "
        f"runpy.run_path({str(REPO / 'dags/uniad_e2e_training.py')!r})"
    )
    assert "airflow" in modules
    assert not {"torch", "mmcv", "numpy", "boto3", "matplotlib"} & modules
