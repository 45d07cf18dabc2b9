"""S3 artifacts: upload a stage's results, download pretrained weights. Works on any boto3 S3 client (the Airflow
tasks pass the amazon provider's ``S3Hook(aws_conn_id).get_conn()``, so credentials come from a connection).

* Uploads are multipart above 64 MB with a SHA-256 checksum on every part (S3 verifies each part on arrival) and
  the whole file's SHA-256 in the object's metadata, checked against HEAD afterwards. An object only appears when
  its multipart upload completes, so an interrupted upload leaves no object; the failed upload is aborted, and
  incomplete uploads an earlier killed process left for the same key are aborted before a new one starts.
* Downloads go to a temp file beside the target, are checked against the object's ``sha256`` metadata when it has
  one, and are renamed into place: a failed download leaves no partial checkpoint in ``ckpts/``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParamError, StorageError
from .checkpoints import sha256_file

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024 * 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str, *, need_key: bool = False) -> S3Location:
    """``s3://bucket[/prefix]``; with ``need_key``, an object's full key is required."""
    match = re.match(r"^s3://([^/]+)/?(.*)$", uri or "")
    if not match or not _BUCKET.match(match.group(1)):
        raise ParamError(f"not an S3 URI: {uri!r}; e.g. s3://my-bucket/uniad-runs")
    bucket, key = match.group(1), match.group(2).strip("/")
    if ".." in key.split("/"):
        raise ParamError(f"S3 key may not contain '..': {uri!r}")
    if need_key and not key:
        raise ParamError(f"{uri!r} names a bucket, not an object; e.g. s3://my-bucket/pretrained/bevformer.pth")
    return S3Location(bucket, key)


def _abort_incomplete(client, bucket: str, key: str) -> int:
    aborted = 0
    for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []):
        if upload["Key"] == key:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted += 1
    if aborted:
        logger.warning("aborted %d incomplete upload(s) of s3://%s/%s left by an earlier attempt", aborted, bucket, key)
    return aborted


def upload_file(
    client,
    path: Path,
    target: S3Location,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Upload one file (multipart above ``chunk_bytes``), verify size and SHA-256, return what was uploaded."""
    from boto3.s3.transfer import TransferConfig

    size = path.stat().st_size
    digest = sha256_file(path)
    _abort_incomplete(client, target.bucket, target.key)
    config = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes, use_threads=True)
    try:
        client.upload_file(
            str(path),
            target.bucket,
            target.key,
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}},
            Config=config,
            Callback=progress,
        )
    except Exception as exc:
        _abort_incomplete(client, target.bucket, target.key)
        raise StorageError(f"upload of {path} to {target.uri} failed, nothing was left behind: {exc}") from exc
    head = client.head_object(Bucket=target.bucket, Key=target.key)
    if head["ContentLength"] != size or head.get("Metadata", {}).get("sha256") != digest:
        raise StorageError(
            f"{target.uri} does not match {path} after upload (size {head['ContentLength']} vs {size}, "
            f"sha256 {head.get('Metadata', {}).get('sha256')} vs {digest})"
        )
    return {"uri": target.uri, "size_bytes": size, "sha256": digest, "multipart": size >= chunk_bytes}


def upload_artifacts(client, files: list[tuple[Path, str]], prefix: S3Location, **kwargs) -> list[dict]:
    """Upload each (file, relative key) below ``prefix``; stops at the first failure."""
    uploaded = []
    for path, relative in files:
        target = S3Location(prefix.bucket, f"{prefix.key}/{relative}" if prefix.key else relative)
        uploaded.append(upload_file(client, path, target, **kwargs))
        logger.info("uploaded %s -> %s (%d bytes)", path, target.uri, uploaded[-1]["size_bytes"])
    return uploaded


def download_file(client, source: S3Location, target: Path) -> dict:
    """Download to ``target`` through a temp file beside it, verifying the object's sha256 metadata if present."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        head = client.head_object(Bucket=source.bucket, Key=source.key)
    except Exception as exc:
        raise StorageError(f"cannot read {source.uri}: {exc} (does it exist, and may the connection read it?)") from exc
    try:
        client.download_file(source.bucket, source.key, str(tmp))
        digest = sha256_file(tmp)
        expected = head.get("Metadata", {}).get("sha256")
        if expected and expected != digest:
            raise StorageError(f"{source.uri}: downloaded sha256 {digest} does not match its metadata {expected}")
        os.replace(tmp, target)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"download of {source.uri} to {target} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return {"uri": source.uri, "path": str(target), "size_bytes": target.stat().st_size, "sha256": digest}
