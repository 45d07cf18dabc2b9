"""What the stage configs of a run say, resolved by mmcv's own ``Config`` in an interpreter with UniAD's stack
(``trainside/uniad_config_facts.py``): ``_base_`` inheritance and the stage's cfg options applied as tools/train.py
applies them, never read from the config's text. The plan keeps the facts: the evaluation interval, ``load_from``
and the data files, which preflight checks before a GPU is taken.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParamError
from ..train.launch import TRAINSIDE_DIR

CONFIG_FACTS_SCRIPT = TRAINSIDE_DIR / "uniad_config_facts.py"
TAIL_LINES = 20
# UniAD's data preparation (docs/DATA_PREP.md): what writes the info files its configs name.
DATA_PREP = (
    "prepare nuScenes as UniAD's docs/DATA_PREP.md says (tools/uniad_create_data.sh writes "
    "data/infos/nuscenes_infos_temporal_{train,val}.pkl; data/others/motion_anchor_infos_mode6.pkl comes with "
    "UniAD's release), or point the config at the files with cfg options, e.g. data.train.ann_file=..."
)


@dataclass(frozen=True)
class ConfigFacts:
    config: str
    total_epochs: int | None = None
    max_epochs: int | None = None
    evaluation_interval: int | None = None  # None: the config does not evaluate
    load_from: str | None = None
    data_files: tuple[tuple[str, str], ...] = ()  # (where in the config, path) of every ann_file and .pkl
    data_roots: tuple[tuple[str, str], ...] = ()  # (where, path) of every data_root

    def missing_data(self, root: Path) -> list[str]:
        """The data files and folders the config names that are not there (relative paths are under the root)."""
        missing = []
        for kind, entries in (("file", self.data_files), ("folder", self.data_roots)):
            for where, path in entries:
                target = Path(path) if Path(path).is_absolute() else root / path
                if not (target.is_file() if kind == "file" else target.is_dir()):
                    missing.append(f"{path} ({where})")
        return sorted(set(missing))


def read_configs(
    python: str, root: Path, stages: Sequence[tuple[str, Sequence[str]]], timeout_s: float = 180.0
) -> list[ConfigFacts]:
    """The facts of each (config, cfg options), read in one run of ``python`` (mmcv is imported once)."""
    argv = [python, str(CONFIG_FACTS_SCRIPT)]
    for config, options in stages:
        argv += ["--stage", config, *options]
    try:
        done = subprocess.run(
            argv,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            env={"PYTHONPATH": str(root), "PYTHONWARNINGS": "ignore", **_inherited()},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ParamError(f"could not run {python!r} to read the configs with mmcv's Config: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-TAIL_LINES:])
        raise ParamError(
            f"mmcv's Config could not read {', '.join(config for config, _ in stages)} under {root} with {python} "
            f"(exit code {done.returncode}); fix the config or its cfg options, or set UNIAD_PYTHON to an "
            f"interpreter with UniAD's stack (mmcv 1.x) on the workers that run preflight:\n{tail}"
        )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return [
        ConfigFacts(
            config=config,
            total_epochs=facts["total_epochs"],
            max_epochs=facts["max_epochs"],
            evaluation_interval=facts["evaluation_interval"],
            load_from=facts["load_from"],
            data_files=tuple(tuple(item) for item in facts["data_files"]),
            data_roots=tuple(tuple(item) for item in facts["data_roots"]),
        )
        for (config, _), facts in zip(stages, found)
    ]


def _inherited() -> dict[str, str]:
    """What the helper needs of this process's environment: where programs and libraries are, nothing else."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "LD_LIBRARY_PATH", "TMPDIR")}
