"""Image copies are refreshed by the SOURCE's identity, never by comparing a copy's ETag with its source's."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from clipfood_assets.data.prepare import copy_images, read_copy_record
from clipfood_assets.lake.base import ObjectInfo
from clipfood_assets.lake.layout import FINE_TUNING_ZONE, IMAGE_COPIES_KEY, TRUSTED_ZONE

KEYS = [f"images/dish__a00000000{i}_0.jpg" for i in range(3)]
PART = 5 * 1024 * 1024  # S3's smallest part but the last


def _multipart_put(s3_server, key: str, data: bytes) -> None:
    """Upload as S3 clients do for large files: two parts, ETag ``<md5 of part md5s>-2``."""
    client = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=TRUSTED_ZONE)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    upload = client.create_multipart_upload(Bucket=TRUSTED_ZONE, Key=key)["UploadId"]
    parts = []
    for number, chunk in enumerate((data[:PART], data[PART:]), start=1):
        etag = client.upload_part(Bucket=TRUSTED_ZONE, Key=key, UploadId=upload, PartNumber=number, Body=chunk)["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    client.complete_multipart_upload(Bucket=TRUSTED_ZONE, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


class MultipartLikeLake:
    """A local lake that lists ETags the way S3 does for multipart sources and their copies:
    the source's ``<md5>-2``, a server-side copy's plain md5 (never equal)."""

    def __init__(self, lake):
        self._lake = lake

    def __getattr__(self, name):
        return getattr(self._lake, name)

    def list(self, bucket, prefix=""):
        for obj in self._lake.list(bucket, prefix):
            digest = hashlib.md5(self._lake.get_bytes(bucket, obj.key)).hexdigest()
            etag = f"{digest}-2" if bucket == TRUSTED_ZONE else digest
            yield ObjectInfo(obj.bucket, obj.key, obj.size, etag, obj.last_modified)


@pytest.fixture(params=["local", "s3"])
def multipart_zone(request, s3_server, tmp_path):
    """(lake, put(key, data)) where every trusted image is a multipart upload."""
    if request.param == "s3":
        lake = request.getfixturevalue("s3_lake")
        return lake, lambda key, data: _multipart_put(s3_server, key, data)
    local = request.getfixturevalue("local_lake")
    return MultipartLikeLake(local), lambda key, data: local.put_bytes(TRUSTED_ZONE, key, data)


def _photo(i: int, tag: bytes = b"") -> bytes:
    return b"\xff\xd8\xff" + bytes([i]) * (PART + 1000) + tag


def test_an_unchanged_zone_of_multipart_uploads_is_not_copied_again(multipart_zone):
    lake, put = multipart_zone
    for i, key in enumerate(KEYS):
        put(key, _photo(i))
    assert all(o.etag.endswith("-2") for o in lake.list(TRUSTED_ZONE, "images/"))
    first = copy_images(lake, KEYS, workers=2)
    assert (first.copied, first.skipped) == (3, 0)
    copies = {o.key: o.etag for o in lake.list(FINE_TUNING_ZONE, "images/")}
    assert not set(copies.values()) & {o.etag for o in lake.list(TRUSTED_ZONE, "images/")}  # the trap: they differ
    again = copy_images(lake, KEYS, workers=2)
    assert (again.copied, again.skipped, again.deleted) == (0, 3, 0)  # the issue: 3 copied on every refresh
    assert {o.key: o.etag for o in lake.list(FINE_TUNING_ZONE, "images/")} == copies

    put(KEYS[1], _photo(1, b"retouched"))  # a changed source is copied, the others are not
    changed = copy_images(lake, KEYS, workers=2)
    assert (changed.copied, changed.skipped) == (1, 2)
    assert lake.get_bytes(FINE_TUNING_ZONE, KEYS[1]).endswith(b"retouched")
    record = read_copy_record(lake)
    assert sorted(record) == KEYS and all(etag.endswith("-2") for etag, _, _ in record.values())


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_copy_or_record_that_is_not_what_was_recorded_is_copied_again(backend, request):
    lake = request.getfixturevalue("local_lake" if backend == "local" else "s3_lake")
    for i, key in enumerate(KEYS):
        lake.put_bytes(TRUSTED_ZONE, key, f"photo {i}".encode())
    copy_images(lake, KEYS, workers=2)

    lake.put_bytes(FINE_TUNING_ZONE, KEYS[0], b"photo 0")  # same bytes rewritten: a new mtime, the same copy
    lake.put_bytes(FINE_TUNING_ZONE, KEYS[1], b"tampered")  # someone replaced a copy
    lake.delete(FINE_TUNING_ZONE, KEYS[2])  # someone removed a copy
    redo = copy_images(lake, KEYS, workers=2)
    assert redo.copied == 2  # identical bytes keep their ETag (an md5) on every backend: nothing to redo
    assert [lake.get_bytes(FINE_TUNING_ZONE, k) for k in KEYS] == [b"photo 0", b"photo 1", b"photo 2"]

    lake.put_bytes(FINE_TUNING_ZONE, IMAGE_COPIES_KEY, b"\x00garbage,\n\"unterminated")  # damaged record
    assert read_copy_record(lake) == {}
    assert copy_images(lake, KEYS, workers=2).copied == 3  # costs copies, never a wrong skip or a crash
    assert copy_images(lake, KEYS, workers=2).copied == 0
    lake.delete(FINE_TUNING_ZONE, IMAGE_COPIES_KEY)  # a zone copied by an older version: no record
    assert copy_images(lake, KEYS, workers=2).copied == 3


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_record_ids_and_etags_that_look_like_numbers_stay_text(backend, request):
    lake = request.getfixturevalue("local_lake" if backend == "local" else "s3_lake")
    key = "images/dish__0004073370_0.jpg"
    lake.put_bytes(TRUSTED_ZONE, key, b"x")
    copy_images(lake, [key])
    lake.put_bytes(FINE_TUNING_ZONE, IMAGE_COPIES_KEY,
                   f'"image_key","source_etag","source_size","copy_etag"\n"{key}","0012e5",1,"0012e5"\n'.encode())
    assert read_copy_record(lake) == {key: ("0012e5", 1, "0012e5")}
