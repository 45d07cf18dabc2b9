"""S3 transfers against a real S3-compatible server (moto's standalone server) on loopback."""

from __future__ import annotations

import os
import shutil

import pytest

from uniad.artifacts.checkpoints import sha256_file
from uniad.artifacts.storage import S3Location, StorageError, download_file, parse_s3_uri, upload_file
from uniad.errors import PipelineError

BUCKET = "uniad-artifacts"
MiB = 1024 * 1024


@pytest.fixture
def s3(s3_client):
    client = s3_client
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=BUCKET)


def big_file(path, size: int):
    path.write_bytes(os.urandom(size))
    return path


def test_parse_s3_uri():
    assert parse_s3_uri("s3://my-bucket/uniad-runs/") == S3Location("my-bucket", "uniad-runs")
    assert parse_s3_uri("s3://my-bucket") == S3Location("my-bucket", "")
    for bad in ("http://x/y", "s3://", "s3://UPPER/x", "s3://b-1/../x"):
        with pytest.raises(PipelineError):
            parse_s3_uri(bad)
    with pytest.raises(PipelineError, match="names a bucket"):
        parse_s3_uri("s3://my-bucket/", need_key=True)


def test_multipart_upload_with_checksums(s3, tmp_path):
    path = big_file(tmp_path / "epoch_6.pth", 12 * MiB + 123)
    target = S3Location(BUCKET, "runs/r1/stage1/epoch_6.pth")
    result = upload_file(s3, path, target, chunk_bytes=5 * MiB)
    assert result == {
        "uri": target.uri,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "multipart": True,
    }
    head = s3.head_object(Bucket=BUCKET, Key=target.key, ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == sha256_file(path)
    assert head["ETag"].endswith('-3"')  # a 3-part multipart upload
    assert head["ChecksumSHA256"]  # each part was sent with its SHA-256, which the server checked on arrival
    assert s3.get_object(Bucket=BUCKET, Key=target.key)["Body"].read() == path.read_bytes()


def test_an_interrupted_upload_leaves_no_object(s3, tmp_path):
    path = big_file(tmp_path / "epoch_6.pth", 16 * MiB)
    target = S3Location(BUCKET, "runs/r1/stage1/epoch_6.pth")
    sent = []

    def interrupt(nbytes: int) -> None:  # the connection drops after the first part
        sent.append(nbytes)
        if sum(sent) > 5 * MiB:
            raise ConnectionResetError("connection reset by peer")

    with pytest.raises(StorageError, match="nothing was left behind"):
        upload_file(s3, path, target, chunk_bytes=5 * MiB, progress=interrupt)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_killed_uploads_parts_are_cleaned_up_by_the_next_attempt(s3, tmp_path):
    """A process killed mid-upload cannot abort: its parts stay, but no object. The retry aborts them first."""
    key = "runs/r1/ckpts/full_track_map.pth"
    stale = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=stale, PartNumber=1, Body=os.urandom(5 * MiB))
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    path = big_file(tmp_path / "full_track_map.pth", 6 * MiB)
    upload_file(s3, path, S3Location(BUCKET, key), chunk_bytes=5 * MiB)
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == path.read_bytes()


def test_download_is_verified_and_atomic(s3, tmp_path):
    path = big_file(tmp_path / "bevformer.pth", 3 * MiB)
    upload_file(s3, path, S3Location(BUCKET, "pretrained/bevformer.pth"))
    ckpts = tmp_path / "root/ckpts"
    fetched = download_file(s3, S3Location(BUCKET, "pretrained/bevformer.pth"), ckpts / "bevformer.pth")
    assert fetched["sha256"] == sha256_file(path) and (ckpts / "bevformer.pth").read_bytes() == path.read_bytes()

    # An object whose content does not match its recorded sha256: refused, and nothing lands in ckpts/.
    s3.put_object(Bucket=BUCKET, Key="pretrained/bad.pth", Body=b"x" * 100, Metadata={"sha256": "0" * 64})
    with pytest.raises(StorageError, match="does not match"):
        download_file(s3, S3Location(BUCKET, "pretrained/bad.pth"), ckpts / "bad.pth")
    with pytest.raises(StorageError, match="does it exist"):
        download_file(s3, S3Location(BUCKET, "pretrained/missing.pth"), ckpts / "missing.pth")
    assert sorted(p.name for p in ckpts.iterdir()) == ["bevformer.pth"]
    shutil.rmtree(tmp_path / "root")
