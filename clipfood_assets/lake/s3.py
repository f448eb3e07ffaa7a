"""S3 backend for MinIO (or any S3-compatible server), through the `minio` client."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.util.retry import Retry

from clipfood_assets.lake.base import (
    Lake,
    LakeError,
    ObjectInfo,
    ObjectNotFound,
    object_content_type,
    validate_bucket,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
# The server's lack of space in the local lake's words (MinIO answers 507 XMinioStorageFull when its drives fill).
_NO_SPACE = {"XMinioStorageFull": "disk full", "EntityTooLarge": "file too large"}


def _http_client(retries: int, backoff: float, timeout: float) -> urllib3.PoolManager:
    # Bounded retries with exponential backoff on connection errors and 5xx; then a clear failure.
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "PUT", "HEAD", "DELETE", "POST"}),
        raise_on_status=False,
    )
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout * 6),
        maxsize=32,
        retries=retry,
        cert_reqs="CERT_REQUIRED",
    )


class S3Lake(Lake):
    """Zones are buckets, created on first write."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        retries: int = 4,
        backoff: float = 0.25,
        timeout: float = 10.0,
    ):
        endpoint = endpoint.removeprefix("http://").removeprefix("https://").rstrip("/")
        self.endpoint = endpoint
        self.secure = secure
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(retries, backoff, timeout),
        )
        self._buckets: set[str] = set()

    def __repr__(self) -> str:  # never show credentials
        return f"S3Lake({self.endpoint!r}, secure={self.secure})"

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise ObjectNotFound(f"no object {what}") from None
            why = f" ({_NO_SPACE[exc.code]})" if exc.code in _NO_SPACE else ""
            raise LakeError(f"S3 error on {what}: {exc.code} {exc.message}{why}") from exc
        except (ServerError, InvalidResponseError) as exc:
            # 5xx after the retries ran out, or a proxy's non-S3 answer (an HTML 503).
            raise LakeError(f"S3 server error on {what} at {self.endpoint}: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LakeError(f"S3 server unreachable for {what} at {self.endpoint}: {exc}") from exc

    def ensure_bucket(self, bucket: str) -> None:
        validate_bucket(bucket)
        if bucket in self._buckets:
            return
        if not self._call(self.uri(bucket), self._client.bucket_exists, bucket_name=bucket):
            try:
                self._client.make_bucket(bucket_name=bucket)
            except S3Error as exc:  # a concurrent writer may have created it
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise LakeError(f"cannot create bucket {bucket}: {exc.code}") from exc
            except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as exc:
                raise LakeError(f"cannot create bucket {self.uri(bucket)} at {self.endpoint}: {exc}") from exc
        self._buckets.add(bucket)

    def _info(self, bucket: str, key: str, etag: str | None, size: int, modified) -> ObjectInfo:
        ts = modified.timestamp() if modified is not None else None
        return ObjectInfo(bucket, key, int(size or 0), (etag or "").strip('"'), ts)

    def put_bytes(self, bucket, key, data, content_type=None):
        import io

        validate_key(key)
        self.ensure_bucket(bucket)
        data = bytes(data)
        result = self._call(
            self.uri(bucket, key),
            self._client.put_object,
            bucket_name=bucket,
            object_name=key,
            data=io.BytesIO(data),
            length=len(data),
            content_type=object_content_type(key, content_type),
        )
        return self._info(bucket, key, result.etag, len(data), result.last_modified)

    def put_file(self, bucket, key, path, content_type=None):
        validate_key(key)
        self.ensure_bucket(bucket)
        self._call(
            self.uri(bucket, key),
            self._client.fput_object,
            bucket_name=bucket,
            object_name=key,
            file_path=str(Path(path)),
            content_type=object_content_type(key, content_type),
        )
        return self.stat(bucket, key)

    @contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        validate_bucket(bucket)
        validate_key(key)
        response = self._call(self.uri(bucket, key), self._client.get_object, bucket_name=bucket, object_name=key)
        try:
            yield _GuardedBody(response, f"{self.uri(bucket, key)} at {self.endpoint}")
        finally:
            response.close()
            response.release_conn()

    def stat(self, bucket, key):
        validate_bucket(bucket)
        validate_key(key)
        st = self._call(self.uri(bucket, key), self._client.stat_object, bucket_name=bucket, object_name=key)
        return self._info(bucket, key, st.etag, st.size, st.last_modified)

    def list(self, bucket, prefix="", *, start_after="", limit=None):
        validate_bucket(bucket)
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return
        if not self._call(self.uri(bucket), self._client.bucket_exists, bucket_name=bucket):
            return
        # The client pages through ListObjectsV2 lazily (1,000 keys a page): memory stays flat for big
        # zones, and stopping at ``limit`` sends no further request.
        objects = self._client.list_objects(bucket_name=bucket, prefix=prefix or None, recursive=True,
                                            start_after=start_after or None)
        try:
            for n, obj in enumerate(objects, 1):
                yield self._info(bucket, obj.object_name, obj.etag, obj.size, obj.last_modified)
                if n == limit:
                    return
        except S3Error as exc:
            raise LakeError(f"S3 error listing {self.uri(bucket, prefix)}: {exc.code}") from exc
        except (ServerError, InvalidResponseError) as exc:
            raise LakeError(f"S3 server error listing {self.uri(bucket, prefix)} at {self.endpoint}: {exc}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LakeError(f"S3 server unreachable listing {self.uri(bucket, prefix)}: {exc}") from exc

    def copy(self, src_bucket, src_key, dst_bucket, dst_key):
        validate_bucket(src_bucket)
        validate_key(src_key)
        validate_key(dst_key)
        self.ensure_bucket(dst_bucket)
        result = self._call(
            f"{self.uri(src_bucket, src_key)} -> {self.uri(dst_bucket, dst_key)}",
            self._client.copy_object,
            bucket_name=dst_bucket,
            object_name=dst_key,
            source=CopySource(src_bucket, src_key),
            # S3 copies the source's headers by default: the copy gets the type its own key names.
            metadata={"Content-Type": object_content_type(dst_key)},
            metadata_directive=REPLACE,
        )
        return (result.etag or "").strip('"')

    def delete(self, bucket, key):
        validate_bucket(bucket)
        validate_key(key)
        try:
            self._call(self.uri(bucket, key), self._client.remove_object, bucket_name=bucket, object_name=key)
        except ObjectNotFound:
            pass

    def uri(self, bucket, key=""):
        return f"s3://{bucket}/{key}"


class _GuardedBody:
    """A response body whose read errors (connection lost mid-download) are LakeErrors naming the object."""

    def __init__(self, response, what: str):
        self._response = response
        self._what = what

    def read(self, amt: int | None = None) -> bytes:
        try:
            return self._response.read(amt)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise LakeError(f"connection lost while reading {self._what}: {exc}") from exc
