"""Write a UniAD-shaped root for the mini model: ``python -m uniad init-mini DIR``.

The root is self-contained, like a UniAD checkout: ``tools/train.py``, ``projects/configs/...`` and the model code
under ``projects/mmdet3d_plugin/uniad_mini/``. It needs only torch and mmcv on the training side, not this project.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ParamError

_HERE = Path(__file__).resolve().parent
SKELETON = _HERE / "skeleton"
PLUGIN_MODULES = (
    "__init__.py",
    "compat.py",
    "data.py",
    "evaluation.py",
    "model.py",
    "registry.py",
    "sampler.py",
    "testing.py",
    "trainer.py",
)
PLUGIN_DIR = Path("projects/mmdet3d_plugin/uniad_mini")
MARKER = ".mini_uniad_root"


def is_mini_root(root: str | Path) -> bool:
    return (Path(root) / MARKER).is_file()


def init_mini_root(root: str | Path) -> Path:
    """Create (or refresh the code of) a mini root; checkpoints and work dirs already there are kept."""
    root = Path(root).resolve()
    if root.exists() and not root.is_dir():
        raise ParamError(f"{root} exists and is not a directory; pick a new folder, e.g. /tmp/uniad-mini")
    if root.is_dir() and any(root.iterdir()) and not is_mini_root(root):
        raise ParamError(
            f"{root} is not empty and is not a mini UniAD root (no {MARKER}); refusing to write into it. "
            "Pick an empty or new folder, e.g. `python -m uniad init-mini /tmp/uniad-mini`."
        )
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(SKELETON, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    plugin = root / PLUGIN_DIR
    plugin.mkdir(parents=True, exist_ok=True)
    for package in (root / "projects", root / "projects/mmdet3d_plugin"):
        (package / "__init__.py").touch()
    for name in PLUGIN_MODULES:
        shutil.copy2(_HERE / name, plugin / name)
    for folder in ("ckpts", "data", "projects/work_dirs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("mini UniAD root written by `python -m uniad init-mini`\n")
    return root
