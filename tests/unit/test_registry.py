"""The model registry on a real MLflow store (a SQLite file): every model is kept as a version, the alias names the
champion, and a rollback rewrites the published file from a named version (sha256 checked) before it moves the alias."""

from __future__ import annotations

import json

import pytest

from support import save_mmcv_checkpoint
from uniad.artifacts.checkpoints import sha256_file
from uniad.artifacts.publish import promote_checkpoint
from uniad.errors import CheckpointError
from uniad.registry import Registry
from uniad.tracking import Tracking
from uniad.workdir import provenance_path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating one runs MLflow's migrations, seconds): each test reads the versions it made."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db"


def test_versions_the_champion_alias_and_a_rollback(store, tmp_path):
    registry = Registry(Tracking(store))
    published = tmp_path / "ckpts/uniad_e2e.pth"
    models = {}
    for run_id, epoch, amota in (("run-a", 5, 0.31), ("run-b", 1, 0.12)):
        candidate = save_mmcv_checkpoint(tmp_path / f"{run_id}.pth", "stage2", epoch)
        provenance = promote_checkpoint(
            candidate, tmp_path / f"{run_id}-copy.pth", stage="stage2", extra={"metrics": {"amota": amota}}
        )
        version = registry.register("stage2", run_id, candidate, provenance)
        assert registry.register("stage2", run_id, candidate, provenance) == version  # a retried task: no new one
        models[run_id] = (version, provenance["sha256"])
    first, second = models["run-a"][0], models["run-b"][0]
    assert int(second) == int(first) + 1
    registry.crown(first)
    champion = registry.champion()
    assert (champion["number"], champion["metrics"], champion["run_id"]) == (first, {"amota": 0.31}, "run-a")
    listed = registry.versions()[:2]  # every version kept, newest first
    assert [(v["number"], v["champion"]) for v in listed] == [(second, False), (first, True)]

    # Roll back (here: to the second version, then to the first again): the file, its provenance and the alias follow.
    for version, run_id in ((second, "run-b"), (first, "run-a")):
        provenance = registry.rollback(version, published)
        assert sha256_file(published) == models[run_id][1] == provenance["sha256"]
        recorded = json.loads(provenance_path(published).read_text())
        assert (recorded["registry_version"], recorded["run_id"]) == (version, run_id)
        assert recorded["source"].startswith("runs:/") and registry.champion()["number"] == version


def test_a_rollback_to_a_version_whose_checkpoint_changed_leaves_everything_as_it_was(store, tmp_path):
    registry = Registry(Tracking(store))
    published = tmp_path / "uniad_e2e.pth"
    candidate = save_mmcv_checkpoint(tmp_path / "a.pth", "stage2", 5)
    good = promote_checkpoint(candidate, published, stage="stage2")
    kept = registry.register("stage2", "run-c", candidate, good)
    registry.crown(kept)
    other = save_mmcv_checkpoint(tmp_path / "b.pth", "stage2", 1)
    bad = registry.register("stage2", "run-d", other, {**good, "sha256": "0" * 64})  # a record not matching its file
    before = sha256_file(published)
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        registry.rollback(bad, published)
    assert sha256_file(published) == before and registry.champion()["number"] == kept
    with pytest.raises(CheckpointError, match="no version 999 of uniad_e2e to roll back to"):
        registry.rollback("999", published)
    assert sha256_file(published) == before


def test_off_or_down_the_registry_says_so():
    assert Registry(Tracking(None)).champion() is None
    assert Registry(Tracking("http://127.0.0.1:9")).register("stage2", "r", None, {"sha256": "x"}) is None
    with pytest.raises(CheckpointError, match="no tracking server to roll back from"):
        Registry(Tracking(None)).rollback("1", None)
