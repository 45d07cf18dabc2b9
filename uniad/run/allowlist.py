"""Where a run may train: the deployment's allowlist of roots (``UNIAD_ALLOWED_ROOTS``).

Whoever may trigger the DAG chooses ``uniad_root``, and the GPU workers then run that root's ``tools/train.py``:
without a limit, trigger rights are code execution on the GPU hosts. Every path a run touches (the root, its
configs, the promoted checkpoint, S3 download targets) must lie inside an allowed directory after symlinks and
``..`` are resolved; preflight refuses anything else before a GPU is taken.

    UNIAD_ALLOWED_ROOTS=/workspace/UniAD:/data/uniad-experiments   # os.pathsep-separated directories

Unset, a ``mini`` run may use the mini runs folder (``UNIAD_RUNS_DIR``) and any run the deployment's ``UNIAD_ROOT``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParamError

SETTING = "UNIAD_ALLOWED_ROOTS"


@dataclass(frozen=True)
class AllowedRoots:
    roots: tuple[Path, ...]  # resolved
    source: str  # where they come from, for the refusal message

    @classmethod
    def from_setting(
        cls, value: str | None, *, profile: str, runs_dir: str | Path, default_root: str | None
    ) -> AllowedRoots:
        if value is not None and value.strip():
            entries = [e for e in value.split(os.pathsep) if e.strip()]
            relative = [e for e in entries if not Path(e).is_absolute()]
            if relative:
                raise ParamError(f"{SETTING} must list absolute directories, got {relative}; e.g. /workspace/UniAD")
            return cls(tuple(Path(e).resolve() for e in entries), f"{SETTING}={value}")
        roots = [Path(default_root)] if default_root else []
        if profile == "mini":
            roots.append(Path(runs_dir))
        described = [f"UNIAD_ROOT ({default_root})"] if default_root else []
        if profile == "mini":
            described.append(f"the mini runs folder ({runs_dir})")
        allowed = " and ".join(described) or "nothing"
        return cls(tuple(p.resolve() for p in roots), f"{SETTING} unset: this run may use {allowed}")

    def check(self, what: str, path: str | Path) -> Path:
        """``path`` resolved (symlinks and ``..``); a ParamError naming the setting when it leaves every root."""
        resolved = Path(path).resolve()
        if any(resolved == root or resolved.is_relative_to(root) for root in self.roots):
            return resolved
        shown = f"{path}" + (f" (resolves to {resolved})" if str(resolved) != str(path) else "")
        raise ParamError(
            f"{what} {shown} is outside the directories this deployment lets runs use ({self.source}). "
            f"Use a root inside one of them, or ask the platform team to add it to {SETTING}."
        )
