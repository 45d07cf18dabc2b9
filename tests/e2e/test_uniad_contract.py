"""profile=uniad against the contract stand-in of UniAD (tests/standin): UniAD's entry points and configs, run by
pyenv's Python 3.8 with a stand-in of its stack and nothing of the pipeline installed, on stand-in GPUs (a GPU
worker's CUDA_VISIBLE_DEVICES; Slurm's GRES on the loopback cluster). What a real cluster would refuse or break on,
the pipeline must get right here: the interpreter, a GPU per rank, the Slurm resources and environment, the data,
the metric printouts."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from support import (
    BIN,
    processes_mentioning,
    run,
    save_mmcv_checkpoint,
    standin_python,
    standin_root,
)
from uniad.errors import ParamError
from uniad.run.params import PipelineParams
from uniad.run.plan import prepare

DAG_ID = "uniad_e2e_training"
STAGE1 = "projects/work_dirs/stage1_track_map/base_track_map"
STAGE2 = "projects/work_dirs/stage2_e2e/base_e2e"


@pytest.fixture(scope="module")
def python38(tmp_path_factory):
    base = tmp_path_factory.mktemp("uniad-venv")
    python = standin_python(base)
    # UniAD's interpreter: the stand-in stack, and nothing of the pipeline.
    assert run([str(python), "-c", "import uniad"], check=False, cwd=base).returncode != 0
    assert run([str(python), "-c", "import torch, mmcv"], cwd=base).returncode == 0
    return python


def ranks(work_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work_dir / "standin_ranks").glob("rank*.json"))]


def dags_test(conf: dict, env: dict, timeout: float = 900):
    done = run(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)], env=env, timeout=timeout, check=False
    )
    return done, done.stdout + done.stderr


def test_the_standin_fails_as_uniad_does(python38, tmp_path):
    """The harness is as strict as a real stack: mmcv's init pins rank r to GPU r % device_count, and UniAD's training
    API asserts total_epochs == runner.max_epochs."""
    root = standin_root(tmp_path / "UniAD")
    argv = [
        str(python38),
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29731",
        "tools/train.py",
        "projects/configs/stage1_track_map/base_track_map.py",
        "--launcher",
        "pytorch",
        "--work-dir",
        str(tmp_path / "w"),
        "--cfg-options",
        "runner.max_epochs=2",
    ]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "ZeroDivisionError: integer division or modulo by zero" in done.stderr
    with_gpus = subprocess.run(
        argv, cwd=root, env={**env, "CUDA_VISIBLE_DEVICES": "0,1"}, capture_output=True, text=True, timeout=120
    )
    assert with_gpus.returncode != 0 and "assert cfg.total_epochs == cfg.runner.max_epochs" in with_gpus.stderr


def test_preflight_reads_uniads_configs_in_its_interpreter_and_refuses_missing_data(python38, tmp_path):
    root = standin_root(tmp_path / "UniAD")
    params = PipelineParams.from_mapping({"profile": "uniad", "uniad_root": str(root)})
    plan, notes = prepare(params, python=str(python38))
    # The form's full_*.py defaults are the fork's names: the upstream base_*.py are trained, and that is said.
    assert plan.stage("stage1").config == "projects/configs/stage1_track_map/base_track_map.py"
    assert any("using UniAD's upstream" in note for note in notes)
    # From _base_ inheritance and the configs' own variables, as mmcv's Config resolves them under Python 3.8.
    assert f"{root}/data/infos/nuscenes_infos_temporal_train.pkl" in plan.stage("stage1").data_files
    assert f"{root}/data/others/motion_anchor_infos_mode6.pkl" in plan.stage("stage2").data_files
    (root / "data/infos/nuscenes_infos_temporal_val.pkl").unlink()
    with pytest.raises(ParamError, match=r"nuscenes_infos_temporal_val.pkl \(data.val.ann_file\).*DATA_PREP.md"):
        prepare(params, python=str(python38))


def test_both_stages_on_a_gpu_worker_under_python38(airflow_home, python38, tmp_path):
    root = standin_root(tmp_path / "UniAD")
    conf = {
        "profile": "uniad",
        "uniad_root": str(root),
        "nproc_per_node": 2,
        "backend": "gloo",
        "stage1_epochs": 2,
        "stage2_epochs": 2,
        "stage2_metric_requirements": ["motion/minADE<=0.9", "planning/obj_box_col_avg<=0.005"],
    }
    done, output = dags_test(conf, {"UNIAD_PYTHON": str(python38), "CUDA_VISIBLE_DEVICES": "0,1"})
    assert done.returncode == 0, output[-6000:]
    for work, epochs in ((STAGE1, 2), (STAGE2, 2)):
        seen = ranks(root / work)
        # Each rank on its own GPU, in UniAD's interpreter (the worker's UNIAD_PYTHON), not Airflow's.
        assert [(r["rank"], r["device"], r["world_size"]) for r in seen] == [(0, 0, 2), (1, 1, 2)]
        assert {(r["python"][:3], r["executable"]) for r in seen} == {("3.8", str(python38))}
        assert (root / work / f"epoch_{epochs}.pth").is_file()
    from uniad.health.analysis import analyze_log
    from uniad.workdir import WorkDir

    work_dir = WorkDir(root / STAGE2)
    analysis, _, _ = analyze_log(work_dir.json_logs(), outputs=work_dir.outputs())
    values = analysis.metrics["values"]
    # UniAD's printout: the headline is the motion category's standard table (0.84 at epoch 2), not the last of the
    # six tables printed (detection category, epa mode: 1.008); collisions stay fractions.
    assert values["motion/minADE"] == 0.84 and values["motion/det_epa/car_min_ade_err"] == 1.008
    assert values["planning/obj_box_col_avg"] == pytest.approx((0.0008 + 0.0024 + 0.004) / 3)
    assert values["motion/epa/EPA_car"] == 0.304 and values["occ/iou_n"] == 60.4
    assert analysis.verdict in ("healthy", "warning") and (root / "ckpts/uniad_e2e.pth").is_file()
    assert json.loads((root / "ckpts/full_track_map.pth.provenance.json").read_text())["epoch"] == 2
    assert processes_mentioning(str(root)) == []


def test_a_gpu_worker_without_gpus_is_refused_before_launch(airflow_home, python38, tmp_path):
    root = standin_root(tmp_path / "UniAD")
    conf = {"profile": "uniad", "uniad_root": str(root), "nproc_per_node": 2, "stage1_epochs": 1, "stage2_epochs": 1}
    done, output = dags_test(conf, {"UNIAD_PYTHON": str(python38), "CUDA_VISIBLE_DEVICES": ""}, timeout=600)
    assert done.returncode != 0
    assert "profile uniad needs a GPU per rank" in output and "AirflowFailException" in output, output[-4000:]
    assert not (root / STAGE1 / "standin_ranks").exists()  # nothing was launched


def test_two_node_slurm_jobs_get_gpus_cpus_and_no_airflow_secret(airflow_home, python38, slurm_env, tmp_path):
    from cryptography.fernet import Fernet

    root = standin_root(tmp_path / "UniAD")
    secrets = {
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt-secret-that-must-stay-home",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-that-must-stay-home",
    }
    # A champion published by hand, without metrics: publish_model scores it where the GPUs are, in a Slurm job.
    save_mmcv_checkpoint(root / "ckpts/uniad_e2e.pth", "stage2", 20)
    conf = {
        "profile": "uniad",
        "uniad_root": str(root),
        "executor": "slurm",
        "nnodes": 2,
        "nproc_per_node": 2,
        "stage1_epochs": 2,
        "stage2_epochs": 1,
    }
    done, output = dags_test(conf, {**slurm_env, **secrets, "UNIAD_PYTHON": str(python38)})
    assert done.returncode == 0, output[-6000:]
    assert re.search(r"evaluating .*uniad_e2e.pth in Slurm job \d+: \[.*'--nodes=1'.*'--gres=gpu:2'", output)
    # The champion (epoch 20) scores higher than the 1-epoch challenger and stays.
    assert "challenger 0.31, champion 0.5, tolerance 0: keeping the champion" in output
    evaluation = root / STAGE2 / "champion_evaluation"
    assert "'pts_bbox_NuScenes/amota': 0.5" in next(evaluation.glob("slurm-*.out")).read_text()
    submitted = re.findall(r"submitted Slurm job \d+: (\[.*\])", output)
    assert len(submitted) == 2
    for line in submitted:
        assert all(
            f"'{item}'" in line
            for item in ("--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gres=gpu:2", "--export=NONE")
        )
    for work in (STAGE1, STAGE2):
        seen = ranks(root / work)
        # 2 nodes x 2 GPUs: every rank on its own GPU of its node, as Slurm allocated them.
        assert [(r["rank"], r["device"], r["CUDA_VISIBLE_DEVICES"], r["world_size"]) for r in seen] == [
            (0, 0, "0,1", 4),
            (1, 1, "0,1", 4),
            (2, 0, "0,1", 4),
            (3, 1, "0,1", 4),
        ]
        assert {r["python"][:3] for r in seen} == {"3.8"} and {r["environ"]["SLURM_JOB_NUM_NODES"] for r in seen} == {
            "2"
        }
        for rank in seen:
            leaked = [k for k, v in rank["environ"].items() if k.startswith("AIRFLOW") or v in secrets.values()]
            assert leaked == [], leaked
        (job,) = [json.loads(line) for line in (root / work / "slurm_jobs.jsonl").read_text().splitlines()]
        assert job["state"] == "COMPLETED" and job["nodes"] == "n[1-2]"
    assert processes_mentioning(str(root)) == []
