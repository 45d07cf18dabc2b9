"""Champion/challenger: the end-to-end model is published only when it is not worse than the champion."""

from __future__ import annotations

import json

import pytest

from support import save_mmcv_checkpoint
from uniad.artifacts.checkpoints import sha256_file
from uniad.artifacts.publish import ChampionRule, publish_model, read_provenance
from uniad.errors import CheckpointError
from uniad.workdir import provenance_path

AMOTA = "pts_bbox_NuScenes/amota"


@pytest.fixture(scope="module")
def candidate(tmp_path_factory):
    return save_mmcv_checkpoint(tmp_path_factory.mktemp("c") / "epoch_5.pth", "stage2", 5)


def test_the_first_model_is_published_with_its_metrics(candidate, tmp_path):
    target = tmp_path / "ckpts/uniad_e2e.pth"
    result = publish_model(candidate, {AMOTA: 0.4}, target, ChampionRule(AMOTA), expect_epoch=5, run_id="r1")
    assert result["published"] and "no champion" in result["comparison"]
    provenance = read_provenance(target)
    assert provenance["metrics"] == {AMOTA: 0.4} and provenance["run_id"] == "r1"
    assert provenance["sha256"] == sha256_file(target) == sha256_file(candidate)


def test_a_worse_challenger_keeps_the_champion_byte_for_byte(candidate, tmp_path):
    target = tmp_path / "uniad_e2e.pth"
    target.write_bytes(b"the champion")
    provenance_path(target).write_text(json.dumps({"metrics": {AMOTA: 0.5}, "run_id": "old"}))
    result = publish_model(candidate, {AMOTA: 0.45}, target, ChampionRule(AMOTA, tolerance=0.01))
    assert not result["published"] and target.read_bytes() == b"the champion"
    assert result["comparison"] == (
        f"{AMOTA} (higher is better): challenger 0.45, champion 0.5, tolerance 0.01: keeping the champion"
    )
    # Within the tolerance it is published.
    assert publish_model(candidate, {AMOTA: 0.495}, target, ChampionRule(AMOTA, tolerance=0.01))["published"]
    assert target.read_bytes() == candidate.read_bytes()


def test_lower_is_better_for_errors(candidate, tmp_path):
    target = tmp_path / "uniad_e2e.pth"
    target.write_bytes(b"the champion")
    provenance_path(target).write_text(json.dumps({"metrics": {"planning/L2_avg": 1.03}}))
    rule = ChampionRule("planning/L2_avg")
    assert not publish_model(candidate, {"planning/L2_avg": 1.10}, target, rule)["published"]
    assert publish_model(candidate, {"planning/L2_avg": 0.99}, target, rule)["published"]


def test_a_champion_without_metrics_is_scored_first(candidate, tmp_path):
    target = tmp_path / "uniad_e2e.pth"
    target.write_bytes(b"published by hand")
    scored = []

    def score(path):
        scored.append(path)
        return {AMOTA: 0.9}

    result = publish_model(candidate, {AMOTA: 0.4}, target, ChampionRule(AMOTA), score_champion=score)
    assert scored == [target] and not result["published"] and result["champion"]["metrics"] == {AMOTA: 0.9}
    with pytest.raises(CheckpointError, match="no recorded metrics and cannot be scored"):
        publish_model(candidate, {AMOTA: 0.4}, target, ChampionRule(AMOTA))


def test_the_rule_needs_the_metric_on_the_challenger(candidate, tmp_path):
    with pytest.raises(CheckpointError, match="has no finite planning/L2_avg .* set champion_metric"):
        ChampionRule("planning/L2_avg").decide({AMOTA: 0.4}, {"planning/L2_avg": 1.0})
