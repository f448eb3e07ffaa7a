"""Object storage: one interface, an S3 backend (MinIO) and a local-directory backend."""

from __future__ import annotations

from collections.abc import Mapping

from clipfood_assets.lake.base import Lake, LakeError, ObjectInfo, ObjectNotFound, UnsafeKey, validate_key
from clipfood_assets.lake.local import LocalLake
from clipfood_assets.lake.s3 import S3Lake
from clipfood_assets.settings import ClipfoodSettings

__all__ = [
    "Lake", "LakeError", "LocalLake", "ObjectInfo", "ObjectNotFound", "S3Lake", "UnsafeKey",
    "lake_from_env", "lake_from_settings", "minio_lake", "validate_key",
]


def minio_lake(endpoint: str, access_key: str | None, secret_key: str | None, *, secure: bool = False,
               region: str | None = None) -> S3Lake:
    """The S3 backend; LakeError naming the variables to set when a credential is missing."""
    if not access_key or not secret_key:
        raise LakeError(
            "MINIO_ENDPOINT is set but credentials are missing: set MINIO_ACCESS_KEY and MINIO_SECRET_KEY "
            "(or the original notebooks' MINIO_USER and MINIO_PASSWORD)"
        )
    return S3Lake(endpoint, access_key, secret_key, secure=secure, region=region)


def lake_from_settings(settings: ClipfoodSettings) -> Lake:
    """MinIO when MINIO_ENDPOINT is set, else the embedded local lake (CLIPFOOD_LAKE_DIR)."""
    if settings.lake_backend == "local":
        return LocalLake(settings.lake_dir)
    secret = lambda value: value.get_secret_value() if value is not None else None  # noqa: E731
    return minio_lake(settings.minio_endpoint, secret(settings.minio_access_key), secret(settings.minio_secret_key),
                      secure=settings.minio_tls, region=settings.minio_region)


def lake_from_env(env: Mapping[str, str] | None = None) -> Lake:
    """The lake the environment names (default: this process's, read now); see :class:`ClipfoodSettings`.

    MINIO_USER / MINIO_PASSWORD (the original notebooks' names) are accepted for the access and secret key.
    """
    return lake_from_settings(ClipfoodSettings.from_env(env))
