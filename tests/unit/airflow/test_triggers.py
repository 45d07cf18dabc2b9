"""A trigger's whole state is its serialize(): a triggerer restart re-creates it from exactly this."""

from __future__ import annotations

from uniad_airflow.triggers import SlurmStageTrigger


def test_serialize_is_all_the_trigger_needs():
    trigger = SlurmStageTrigger(
        job_id="12",
        stage="stage1",
        work_dir="/r/w",
        total_epochs=6,
        started=1.5,
        stall_timeout_s=600,
        later_epochs=20,
        controller_grace_s=300,
        run_id="manual__1",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "uniad_airflow.triggers.SlurmStageTrigger"
    assert kwargs == {
        "job_id": "12",
        "stage": "stage1",
        "work_dir": "/r/w",
        "total_epochs": 6,
        "started": 1.5,
        "stall_timeout_s": 600,
        "later_epochs": 20,
        "poll_s": 5.0,
        "run_id": "manual__1",
        "tracking_run": None,
        "controller_grace_s": 300,
    }
    assert SlurmStageTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_the_local_job_trigger_too():
    from uniad_airflow.triggers import LocalJobTrigger

    trigger = LocalJobTrigger(job_id="j", stage="stage2", work_dir="/r/w2", total_epochs=20, started=2.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "uniad_airflow.triggers.LocalJobTrigger"
    assert kwargs == {
        "job_id": "j",
        "stage": "stage2",
        "work_dir": "/r/w2",
        "total_epochs": 20,
        "started": 2.5,
        "stall_timeout_s": 600.0,
        "later_epochs": None,
        "poll_s": 2.0,
        "run_id": None,  # a trigger serialized before alerts came from triggers: it follows on, alerting no one
        "tracking_run": None,
    }
    assert LocalJobTrigger(**kwargs).serialize() == (classpath, kwargs)
