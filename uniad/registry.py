"""The model registry on MLflow: every promoted stage-1 checkpoint and every stage-2 model is a version, and the
alias ``champion`` names the stage-2 model that deployment gets (the file at ``publish_path``).

    registry = Registry(Tracking(uri))
    registry.register("stage2", "scheduled__2026-12-01", checkpoint, provenance)   # -> "3"
    registry.champion()                                                             # the alias' version and metrics
    registry.rollback("2", publish_path)                                            # file and alias back to version 2

A version holds the checkpoint (an artifact of its stage's MLflow run, ``model/<file>``), its provenance
(``model/provenance.json``) and, as tags, its sha256, epoch, metrics and the Airflow run it came from. Versions are
never deleted: champion/challenger only moves the alias, and a rollback moves it back to a named version after the
file at ``publish_path`` was rewritten from that version (atomically, with its provenance, its sha256 checked).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from .errors import CheckpointError
from .tracking import RUN_TAG, Tracking

logger = logging.getLogger(__name__)

MODELS = {"stage1": "uniad_track_map", "stage2": "uniad_e2e"}
CHAMPION = "champion"
ARTIFACTS = "model"
ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")  # MLflow's codes for a model or alias not there


class Registry:
    """Registered models on the tracking server of ``tracking``; None or nothing when tracking is off or down."""

    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking

    def register(self, stage: str, airflow_run_id: str, checkpoint: Path, provenance: dict) -> str | None:
        """``checkpoint`` (as ``provenance`` describes it) as a version of the stage's model: its number. A version of
        the same run and sha256 is that version (a retried task registers nothing twice)."""
        tracked = self.tracking.stage_run(airflow_run_id, stage, params={})
        if tracked is None:
            return None

        def register() -> str:
            client, name = self.tracking.client, MODELS[stage]
            for version in client.search_model_versions(f"name = '{name}' and run_id = '{tracked}'"):
                if version.tags.get("sha256") == provenance["sha256"]:
                    return str(version.version)
            with tempfile.TemporaryDirectory() as scratch:
                sidecar = Path(scratch) / "provenance.json"
                sidecar.write_text(json.dumps(provenance, indent=2) + "\n")
                client.log_artifact(tracked, str(checkpoint), ARTIFACTS)
                client.log_artifact(tracked, str(sidecar), ARTIFACTS)
            from mlflow.exceptions import MlflowException

            try:
                client.get_registered_model(name)
            except MlflowException as exc:
                if exc.error_code not in ABSENT:
                    raise
                client.create_registered_model(name, description=f"UniAD {stage} checkpoints of the pipeline")
            tags = {
                "sha256": provenance["sha256"],
                "epoch": str(provenance.get("epoch")),
                "file": Path(checkpoint).name,
                RUN_TAG: airflow_run_id,
                "metrics": json.dumps(provenance.get("metrics") or {}),
            }
            version = client.create_model_version(
                name, f"runs:/{tracked}/{ARTIFACTS}", run_id=tracked, tags=tags, run_link=provenance.get("run_link")
            )
            return str(version.version)

        version = self.tracking.guarded(f"registering the {stage} model", register)
        if version is not None:
            logger.info("%s of run %s registered as %s version %s", checkpoint, airflow_run_id, MODELS[stage], version)
        return version

    def champion(self) -> dict | None:
        """The stage-2 version the alias names: ``number``, ``sha256``, ``metrics``, ``run_id``; None without one
        (or with tracking off or down)."""

        def read() -> dict | None:
            from mlflow.exceptions import MlflowException

            try:
                version = self.tracking.client.get_model_version_by_alias(MODELS["stage2"], CHAMPION)
            except MlflowException as exc:
                if exc.error_code in ABSENT:  # no model, or no alias yet
                    return {}
                raise
            return describe(version)

        found = self.tracking.guarded("reading the champion", read)
        return found or None

    def crown(self, version: str) -> None:
        """Point the alias at ``version``."""
        self.tracking.guarded(
            "moving the champion alias",
            lambda: self.tracking.client.set_registered_model_alias(MODELS["stage2"], CHAMPION, version),
        )

    def versions(self, stage: str = "stage2") -> list[dict]:
        """Every version of the stage's model, newest first; ``champion`` marks the one the alias names (a search
        does not return aliases)."""
        found = self.tracking.guarded(
            "listing versions", lambda: self.tracking.client.search_model_versions(f"name = '{MODELS[stage]}'")
        )
        crowned = (self.champion() or {}).get("number") if stage == "stage2" and found else None
        listed = [{**describe(v), "champion": str(v.version) == crowned} for v in found or []]
        return sorted(listed, key=lambda v: -int(v["number"]))

    def rollback(self, version: str, publish_path: Path) -> dict:
        """Rewrite ``publish_path`` from stage-2 ``version`` (atomically, with provenance; its sha256 checked), then
        move the alias to it: the provenance now at ``publish_path``. Raises when it cannot: the file and the alias
        are then as they were (or, if only the alias move failed, run it again: it is idempotent)."""
        from .artifacts.checkpoints import sha256_file
        from .artifacts.publish import promote_checkpoint

        if not self.tracking.on:
            raise CheckpointError(f"no tracking server to roll back from ({self.tracking.uri or 'tracking is off'})")
        from mlflow.exceptions import MlflowException

        client = self.tracking.client
        try:
            target = describe(client.get_model_version(MODELS["stage2"], version))
        except MlflowException as exc:
            raise CheckpointError(
                f"no version {version} of {MODELS['stage2']} to roll back to ({exc.message}); list them with "
                f"python -m uniad models. {publish_path} was left unchanged"
            ) from exc
        with tempfile.TemporaryDirectory() as scratch:
            try:
                local = Path(client.download_artifacts(target["mlflow_run"], f"{ARTIFACTS}/{target['file']}", scratch))
            except Exception as exc:  # the artifact store unreachable, the file gone from it
                raise CheckpointError(
                    f"could not fetch version {version}'s checkpoint: {exc}. {publish_path} was left unchanged"
                ) from exc
            if sha256_file(local) != target["sha256"]:
                raise CheckpointError(
                    f"version {version}'s checkpoint does not match its recorded sha256 {target['sha256']}: "
                    f"{publish_path} was left unchanged"
                )
            provenance = promote_checkpoint(
                local,
                publish_path,
                stage="stage2",
                extra={
                    "source": f"runs:/{target['mlflow_run']}/{ARTIFACTS}/{target['file']}",
                    "source_resolved": f"{MODELS['stage2']} version {version}",
                    "metrics": target["metrics"],
                    "run_id": target["run_id"],
                    "registry_version": version,
                },
            )
        client.set_registered_model_alias(MODELS["stage2"], CHAMPION, version)
        logger.info(
            "%s is version %s again (sha256 %s); alias %s moved", publish_path, version, target["sha256"][:12], CHAMPION
        )
        return provenance


def describe(version) -> dict:
    tags = version.tags or {}
    return {
        "number": str(version.version),
        "sha256": tags.get("sha256"),
        "epoch": tags.get("epoch"),
        "file": tags.get("file"),
        "run_id": tags.get(RUN_TAG),
        "metrics": json.loads(tags.get("metrics") or "{}"),
        "mlflow_run": version.run_id,
    }
