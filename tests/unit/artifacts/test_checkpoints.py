from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import save_mmcv_checkpoint
from uniad.artifacts.checkpoints import inspect_checkpoint, sha256_file
from uniad.artifacts.publish import promote_checkpoint
from uniad.errors import CheckpointError
from uniad.workdir import provenance_path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    return {
        "stage1": save_mmcv_checkpoint(folder / "stage1_epoch_6.pth", "stage1", 6),
        "stage2": save_mmcv_checkpoint(folder / "stage2_epoch_20.pth", "stage2", 20),
    }


def test_valid_stage1_checkpoint_report(ckpts):
    report = inspect_checkpoint(ckpts["stage1"], stage="stage1", expect_epoch=6)
    assert report.valid, report.problems
    assert (report.epoch, report.iter) == (6, 240)
    assert report.sha256 == sha256_file(ckpts["stage1"]) and len(report.sha256) == 64
    state = torch.load(ckpts["stage1"], weights_only=True)["state_dict"]
    assert report.tensor_count == len(state)
    assert report.non_finite_tensors == [] and report.missing_prefixes == []
    assert report.mmcv_version == "1.7.2"


def test_stage2_checkpoint_passed_as_stage1_is_rejected(ckpts):
    report = inspect_checkpoint(ckpts["stage2"], stage="stage1")
    assert not report.valid
    assert report.unexpected_prefixes == ["motion_head.", "occ_head.", "planning_head."]
    assert "looks like a stage-2 (end-to-end) checkpoint" in report.problems[0]


def test_stage1_checkpoint_passed_as_stage2_is_rejected(ckpts):
    report = inspect_checkpoint(ckpts["stage1"], stage="stage2")
    assert not report.valid
    assert report.missing_prefixes == ["motion_head.", "occ_head.", "planning_head."]
    assert "looks like a stage-1 (track + map) checkpoint" in report.problems[0]


def test_stage2_checkpoint_is_valid_for_stage2(ckpts):
    assert inspect_checkpoint(ckpts["stage2"], stage="stage2", expect_epoch=20).valid


def test_wrong_epoch_is_reported(ckpts):
    report = inspect_checkpoint(ckpts["stage1"], stage="stage1", expect_epoch=5)
    assert not report.valid
    assert "epoch 6, expected epoch 5" in report.problems[0]


def test_nan_weights_are_reported_by_name(tmp_path):
    def poison(model):
        with torch.no_grad():
            model.seg_head.stuff_conv.weight.fill_(float("nan"))

    path = save_mmcv_checkpoint(tmp_path / "nan.pth", "stage1", 6, corrupt=poison)
    report = inspect_checkpoint(path, stage="stage1")
    assert report.non_finite_tensors == ["seg_head.stuff_conv.weight"]
    assert "contain NaN or Inf" in report.problems[0]


def test_truncated_checkpoint_is_reported_not_raised(ckpts, tmp_path):
    data = ckpts["stage1"].read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    report = inspect_checkpoint(path, stage="stage1")
    assert not report.valid
    assert "unreadable or truncated" in report.problems[0]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"img_backbone.w": torch.zeros(1)}, "meta": {"x": _Payload(str(marker))}}, path)
    report = inspect_checkpoint(path)
    assert not report.valid
    assert "refused to unpickle" in report.problems[0] and "It was not executed" in report.problems[0]
    assert not marker.exists()
    # The payload is real: a plain unpickle would have created the file.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_missing_file_and_dangling_symlink(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        inspect_checkpoint(tmp_path / "nope.pth")
    link = tmp_path / "latest.pth"
    link.symlink_to(tmp_path / "epoch_9.pth")
    with pytest.raises(CheckpointError, match="dangling symlink"):
        inspect_checkpoint(link)


def test_promote_resolves_latest_symlink_and_writes_provenance(ckpts, tmp_path):
    work = tmp_path / "work_dir"
    work.mkdir()
    epoch6 = work / "epoch_6.pth"
    epoch6.write_bytes(ckpts["stage1"].read_bytes())
    (work / "latest.pth").symlink_to("epoch_6.pth")
    dst = tmp_path / "ckpts" / "full_track_map.pth"
    provenance = promote_checkpoint(work / "latest.pth", dst, stage="stage1", expect_epoch=6)
    assert dst.is_file() and not dst.is_symlink()
    assert dst.read_bytes() == epoch6.read_bytes()
    assert provenance["source_resolved"] == str(epoch6)
    assert provenance["sha256"] == sha256_file(dst)
    assert provenance["epoch"] == 6
    assert json.loads(provenance_path(dst).read_text()) == provenance
    assert sorted(p.name for p in dst.parent.iterdir()) == ["full_track_map.pth", "full_track_map.pth.provenance.json"]


def test_refused_promotion_leaves_previous_file_untouched(ckpts, tmp_path):
    dst = tmp_path / "full_track_map.pth"
    dst.write_bytes(ckpts["stage1"].read_bytes())
    before = sha256_file(dst)
    with pytest.raises(CheckpointError, match="left unchanged"):
        promote_checkpoint(ckpts["stage2"], dst, stage="stage1")
    assert sha256_file(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full_track_map.pth"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m uniad ARGS``, run in this process (its exit code and output; torch is imported already)."""
    import contextlib
    import io

    from uniad.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["python", "-m", "uniad", *args], code, out.getvalue(), err.getvalue())


def test_cli_inspect_exit_codes_and_json(ckpts):
    ok = _cli("inspect", str(ckpts["stage1"]), "--stage", "stage1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    bad = _cli("inspect", str(ckpts["stage1"]), "--stage", "stage2")
    assert bad.returncode == 1
    assert "INVALID" in bad.stdout and "not a stage2 checkpoint" in bad.stdout
    bad = _cli("inspect", str(ckpts["stage2"]), "--stage", "stage1")
    assert bad.returncode == 1 and "stage-2 heads" in bad.stdout


def test_cli_promote_refusal_is_exit_1_with_message(ckpts, tmp_path):
    done = _cli("promote", str(ckpts["stage2"]), str(tmp_path / "x.pth"), "--stage", "stage1")
    assert done.returncode == 1
    assert "refusing to promote" in done.stderr
    assert not (tmp_path / "x.pth").exists()


def test_write_failure_mid_copy_keeps_the_previous_good_file(ckpts, tmp_path):
    """Disk full during promote, for real: the promote process may not write more than 64 KiB to any file."""
    import resource
    import signal

    dst = tmp_path / "ckpts" / "full_track_map.pth"
    dst.parent.mkdir()
    dst.write_bytes(b"previous good checkpoint")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run(
        [sys.executable, "-m", "uniad", "promote", str(ckpts["stage1"]), str(dst), "--stage", "stage1"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 1
    assert "could not write" in done.stderr and "File too large" in done.stderr and "left unchanged" in done.stderr
    assert dst.read_bytes() == b"previous good checkpoint"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["full_track_map.pth"]  # no temp file, no sidecar


def test_permission_denied_during_promote_keeps_the_previous_file(ckpts, tmp_path):
    """No write permission in ckpts/, for real. Root ignores permission bits through CAP_DAC_OVERRIDE, so when the
    suite runs as root the promote process starts without it (dropped from its capability bounding set)."""
    import ctypes

    def without_permission_override():
        if os.geteuid() != 0:
            return
        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    dst = tmp_path / "ckpts" / "full_track_map.pth"
    dst.parent.mkdir()
    dst.write_bytes(b"previous good checkpoint")
    dst.parent.chmod(0o555)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "uniad", "promote", str(ckpts["stage1"]), str(dst), "--stage", "stage1"],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=without_permission_override,
        )
    finally:
        dst.parent.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "could not write" in done.stderr and "Permission denied" in done.stderr and "left unchanged" in done.stderr
    assert dst.read_bytes() == b"previous good checkpoint"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["full_track_map.pth"]  # no temp file, no sidecar
