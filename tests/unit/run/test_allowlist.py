"""Allowed roots: a run may only touch the directories the deployment allows, after symlinks and '..'."""

from __future__ import annotations

import pytest

from support import PYTHON
from uniad.errors import ParamError
from uniad.run.allowlist import AllowedRoots
from uniad.run.params import PipelineParams
from uniad.run.plan import prepare


@pytest.fixture
def allowed(tmp_path) -> AllowedRoots:
    (tmp_path / "allowed").mkdir()
    return AllowedRoots.from_setting(str(tmp_path / "allowed"), profile="mini", runs_dir="/unused", default_root=None)


def test_inside_is_allowed_and_resolved(allowed, tmp_path):
    assert allowed.check("uniad_root", tmp_path / "allowed/a/b") == (tmp_path / "allowed/a/b").resolve()


@pytest.mark.parametrize("escape", ["../outside", "a/../../outside"])
def test_dot_dot_out_is_refused_naming_the_setting(allowed, tmp_path, escape):
    with pytest.raises(ParamError, match=r"outside the directories .*UNIAD_ALLOWED_ROOTS=") as info:
        allowed.check("uniad_root", tmp_path / "allowed" / escape)
    assert "resolves to" in str(info.value)


def test_a_symlink_that_points_out_is_refused(allowed, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "allowed/link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ParamError, match=f"resolves to {tmp_path / 'elsewhere'}"):
        allowed.check("uniad_root", tmp_path / "allowed/link")


def test_unset_allows_the_mini_runs_folder_for_mini_and_uniad_root():
    mini = AllowedRoots.from_setting(None, profile="mini", runs_dir="/srv/runs", default_root="/workspace/UniAD")
    assert mini.check("uniad_root", "/srv/runs/dag/run1") and mini.check("uniad_root", "/workspace/UniAD")
    real = AllowedRoots.from_setting("", profile="uniad", runs_dir="/srv/runs", default_root="/workspace/UniAD")
    with pytest.raises(
        ParamError, match=r"UNIAD_ALLOWED_ROOTS unset: this run may use UNIAD_ROOT \(/workspace/UniAD\)"
    ):
        real.check("uniad_root", "/srv/runs/dag/run1")
    nothing = AllowedRoots.from_setting(None, profile="uniad", runs_dir="/srv/runs", default_root=None)
    with pytest.raises(ParamError, match="may use nothing"):
        nothing.check("uniad_root", "/workspace/UniAD")
    with pytest.raises(ParamError, match="absolute directories"):
        AllowedRoots.from_setting("relative/dir", profile="mini", runs_dir="/srv/runs", default_root=None)


def test_preflight_checks_the_root_before_writing_and_every_path_after(allowed, tmp_path):
    outside = tmp_path / "outside-root"
    with pytest.raises(ParamError, match="uniad_root"):
        prepare(PipelineParams(profile="mini", uniad_root=str(outside)), python=PYTHON, allowed=allowed)
    assert not outside.exists()  # refused before anything was written
    inside = tmp_path / "allowed/root"
    with pytest.raises(ParamError, match="ckpt_path"):
        prepare(
            PipelineParams(profile="mini", uniad_root=str(inside), ckpt_path="/etc/x.pth"),
            python=PYTHON,
            allowed=allowed,
        )
    # ckpts/ replaced by a symlink out of the allowed roots: the S3 download target would land outside.
    (tmp_path / "elsewhere").mkdir()
    (inside / "ckpts").rename(tmp_path / "old-ckpts")
    (inside / "ckpts").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ParamError, match="ckpt_path"):
        prepare(PipelineParams(profile="mini", uniad_root=str(inside)), python=PYTHON, allowed=allowed)
    with pytest.raises(ParamError, match="publish_path"):
        prepare(
            PipelineParams(profile="mini", uniad_root=str(inside), ckpt_path=str(inside / "p.pth")),
            python=PYTHON,
            allowed=allowed,
        )
    params = PipelineParams(
        profile="mini",
        uniad_root=str(inside),
        ckpt_path=str(inside / "promoted.pth"),
        publish_path=str(inside / "published.pth"),
        pretrained_s3_uris=("s3://bucket/pre/bev.pth",),
    )
    with pytest.raises(ParamError, match="download target of s3://bucket/pre/bev.pth"):
        prepare(params, python=PYTHON, allowed=allowed)
