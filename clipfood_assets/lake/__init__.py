"""Object storage: one interface, an S3 backend (MinIO) and a local-directory backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from clipfood_assets.lake.base import Lake, LakeError, ObjectInfo, ObjectNotFound, UnsafeKey, validate_key
from clipfood_assets.lake.local import LocalLake
from clipfood_assets.lake.s3 import S3Lake
from clipfood_assets.paths import STATE_DIR

DEFAULT_LAKE_DIR = STATE_DIR / "lake"

__all__ = [
    "Lake", "LakeError", "LocalLake", "ObjectInfo", "ObjectNotFound", "S3Lake", "UnsafeKey",
    "lake_from_env", "validate_key",
]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def lake_from_env(env: Mapping[str, str] | None = None) -> Lake:
    """MinIO when MINIO_ENDPOINT is set, else the embedded local lake (CLIPFOOD_LAKE_DIR).

    MINIO_USER / MINIO_PASSWORD (the original notebooks' names) are accepted for the access and secret key.
    """
    env = os.environ if env is None else env
    endpoint = env.get("MINIO_ENDPOINT", "").strip()
    if not endpoint:
        return LocalLake(Path(env.get("CLIPFOOD_LAKE_DIR") or DEFAULT_LAKE_DIR))
    access = env.get("MINIO_ACCESS_KEY") or env.get("MINIO_USER")
    secret = env.get("MINIO_SECRET_KEY") or env.get("MINIO_PASSWORD")
    if not access or not secret:
        raise LakeError(
            "MINIO_ENDPOINT is set but credentials are missing: set MINIO_ACCESS_KEY and MINIO_SECRET_KEY "
            "(or the original notebooks' MINIO_USER and MINIO_PASSWORD)"
        )
    secure = _truthy(env.get("MINIO_SECURE")) or endpoint.startswith("https://")
    return S3Lake(endpoint, access, secret, secure=secure, region=env.get("MINIO_REGION") or None)
