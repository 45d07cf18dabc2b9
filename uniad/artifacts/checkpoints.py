"""Inspect mmcv checkpoints, safely: ``torch.load(weights_only=True)``, since a checkpoint is untrusted pickle and
anything but tensors and plain containers is refused without being executed. A multi-GB checkpoint is mmap-loaded
and checked for NaN/Inf chunk by chunk, dropping the pages it has checked, so it never sits in memory whole."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import mmap
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from ..stages import STAGES
from ..workdir import MID_EPOCH_META_KEY

logger = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
# Present in both stages of UniAD (and of the mini model).
PERCEPTION_PREFIXES = (
    "img_backbone.",
    "img_neck.",
    "pts_bbox_head.",
    "query_embedding",
    "reference_points",
    "query_interact.",
    "memory_bank.",
    "seg_head.",
)
# Built only in stage 2; a stage-1 checkpoint loaded into stage 2 reports these as missing, by design.
E2E_PREFIXES = ("motion_head.", "occ_head.", "planning_head.")
MAX_LISTED = 10


@dataclass
class CheckpointReport:
    path: str
    resolved_path: str
    size_bytes: int
    sha256: str
    stage: str | None
    epoch: int | None = None
    iter: int | None = None
    inner_iter: int | None = None  # iterations into the next epoch, for an iteration checkpoint
    inner_iter_world_size: int | None = None  # the processes that trained those iterations
    mmcv_version: str | None = None
    trained_world_size: int | None = None  # processes that trained it (UniAD: gpu_ids = range(0, N) in its config)
    tensor_count: int = 0
    parameter_count: int = 0
    non_finite_tensors: list[str] = field(default_factory=list)
    missing_prefixes: list[str] = field(default_factory=list)
    unexpected_prefixes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "valid": self.valid}

    def summary(self) -> str:
        lines = [
            f"checkpoint   {self.path}" + (f" -> {self.resolved_path}" if self.resolved_path != self.path else ""),
            f"size         {self.size_bytes} bytes",
            f"sha256       {self.sha256}",
            f"epoch/iter   {self.epoch}/{self.iter}"
            + (f" (mid-epoch: {self.inner_iter} iterations into epoch {self.epoch + 1})" if self.inner_iter else ""),
            f"tensors      {self.tensor_count} ({self.parameter_count} values)",
            f"non-finite   {len(self.non_finite_tensors)} tensor(s)"
            + (f": {', '.join(self.non_finite_tensors[:MAX_LISTED])}" if self.non_finite_tensors else ""),
        ]
        if self.stage:
            lines.append(f"stage        {self.stage}")
        lines.append("verdict      " + ("valid" if self.valid else "INVALID"))
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def world_size_of(meta: dict) -> int | None:
    """How many processes trained a checkpoint. UniAD's train.py sets ``cfg.gpu_ids = range(world_size)`` before
    the config text goes into the meta; the mini also logs ``world_size: N`` in env_info. The ``GPU 0,1,...`` line
    of env_info is not it: that lists the GPUs the machine showed, whatever ``nproc_per_node`` was."""
    config = meta.get("config")
    if isinstance(config, str) and (match := re.search(r"^gpu_ids\s*=\s*range\(\s*0\s*,\s*(\d+)\s*\)", config, re.M)):
        return int(match.group(1))
    env_info = meta.get("env_info")
    if isinstance(env_info, str) and (match := re.search(r"^world_size: (\d+)$", env_info, re.M)):
        return int(match.group(1))
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_MADV_DONTNEED = 4
_CHUNK_ELEMENTS = 1 << 20  # isfinite's temporaries stay a few MB


def _page_releaser():
    """``release(ptr, nbytes)``: madvise(MADV_DONTNEED) on the whole pages inside a checked range of an
    mmap-loaded (file-backed, private, unmodified) storage, so a multi-GB checkpoint never sits in this process's
    memory whole; dropped pages are read again from the file if touched. None where libc has no madvise."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE

    def release(ptr: int, nbytes: int) -> None:
        start = -(-ptr // page) * page  # whole pages only: never a neighbour's bytes
        end = (ptr + nbytes) // page * page
        if end > start:
            madvise(start, end - start, _MADV_DONTNEED)

    return release


def _all_finite(tensor, release=None) -> bool:
    """Chunked isfinite; with ``release``, each checked chunk of an mmap-backed tensor leaves memory again."""
    import torch

    flat = tensor.reshape(-1)
    in_place = release is not None and flat.data_ptr() == tensor.data_ptr() and flat.is_contiguous()
    for i in range(0, flat.numel(), _CHUNK_ELEMENTS):
        part = flat[i : i + _CHUNK_ELEMENTS]
        finite = bool(torch.isfinite(part).all())
        if in_place:
            release(part.data_ptr(), part.numel() * part.element_size())
        if not finite:
            return False
    return True


def _load(path: Path) -> object:
    import torch  # heavy: imported only when a checkpoint is actually read

    try:
        # mmap keeps a multi-GB checkpoint out of RAM; only the zip format supports it.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors and plain containers "
            f"({first}). It was not executed. Only load checkpoints from sources you trust, re-saved as weights."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint: {exc}") from exc


def _state_dict(obj: object, path: Path) -> tuple[dict, dict]:
    import torch

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, meta = obj["state_dict"], obj.get("meta") or {}
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise CheckpointError(
            f"{path}: not an mmcv checkpoint: expected a dict with 'state_dict' (and 'meta'), "
            f"got {type(obj).__name__}" + (f" with keys {sorted(obj)[:MAX_LISTED]}" if isinstance(obj, dict) else "")
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state, meta if isinstance(meta, dict) else {}


def inspect_checkpoint(
    path: str | Path, stage: str | None = None, expect_epoch: int | None = None, *, sha256: bool = True
) -> CheckpointReport:
    """Load ``path`` safely and report what a gate needs; ``report.valid`` says whether it fits ``stage``.

    ``sha256=False`` skips the hashing pass (promotion hashes while it copies)."""
    import torch

    if stage is not None and stage not in STAGES:
        raise CheckpointError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    original = Path(path)
    if not original.exists():
        raise CheckpointError(f"no checkpoint at {original}" + (" (dangling symlink)" if original.is_symlink() else ""))
    resolved = original.resolve()
    report = CheckpointReport(
        path=str(original),
        resolved_path=str(resolved),
        size_bytes=resolved.stat().st_size,
        sha256=sha256_file(resolved) if sha256 else "",
        stage=stage,
    )
    try:
        state, meta = _state_dict(_load(resolved), resolved)
    except CheckpointError as exc:
        report.problems.append(str(exc))
        return report

    report.epoch = meta.get("epoch") if isinstance(meta.get("epoch"), int) else None
    report.iter = meta.get("iter") if isinstance(meta.get("iter"), int) else None
    mid_epoch = meta.get(MID_EPOCH_META_KEY)
    if isinstance(mid_epoch, dict) and isinstance(mid_epoch.get("inner_iter"), int):
        report.inner_iter = mid_epoch["inner_iter"]
        world_size = mid_epoch.get("world_size")
        report.inner_iter_world_size = world_size if isinstance(world_size, int) and world_size > 0 else None
    report.mmcv_version = meta.get("mmcv_version") if isinstance(meta.get("mmcv_version"), str) else None
    report.trained_world_size = world_size_of(meta)
    release = _page_releaser() if zipfile.is_zipfile(resolved) else None
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            continue
        report.tensor_count += 1
        report.parameter_count += tensor.numel()
        if tensor.is_floating_point() and tensor.numel() and not _all_finite(tensor, release):
            report.non_finite_tensors.append(name)
    if report.tensor_count == 0:
        report.problems.append("the state_dict holds no tensors")
    if report.non_finite_tensors:
        listed = ", ".join(report.non_finite_tensors[:MAX_LISTED])
        report.problems.append(
            f"{len(report.non_finite_tensors)} tensor(s) contain NaN or Inf ({listed}): training diverged before "
            "this checkpoint was saved; use an earlier epoch_N.pth"
        )

    def has(prefix: str) -> bool:
        return any(key.startswith(prefix) for key in state)

    if stage is not None:
        required = PERCEPTION_PREFIXES + (E2E_PREFIXES if stage == "stage2" else ())
        report.missing_prefixes = [p for p in required if not has(p)]
        if stage == "stage1":
            report.unexpected_prefixes = [p for p in E2E_PREFIXES if has(p)]
        if report.missing_prefixes:
            hint = (
                " This looks like a stage-1 (track + map) checkpoint; stage 2 adds motion, occ and planning heads."
                if stage == "stage2" and not any(has(p) for p in E2E_PREFIXES)
                else ""
            )
            report.problems.append(
                f"not a {stage} checkpoint: missing parameters under {', '.join(report.missing_prefixes)}.{hint}"
            )
        if report.unexpected_prefixes:
            report.problems.append(
                f"not a stage1 checkpoint: it has stage-2 heads ({', '.join(report.unexpected_prefixes)}); "
                "this looks like a stage-2 (end-to-end) checkpoint"
            )
    if expect_epoch is not None and report.epoch != expect_epoch:
        report.problems.append(
            f"checkpoint is from epoch {report.epoch}, expected epoch {expect_epoch}: the stage did not finish, or "
            "the wrong file was picked"
        )
    return report
