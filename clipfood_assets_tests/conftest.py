"""Shared fixtures: a real S3 HTTP server (moto) on 127.0.0.1, and lakes on both backends."""

from __future__ import annotations

import os
import tempfile
import uuid

# Before the package is imported: tests never read or write the project's own .clipfood/ state
# (a developer's `make demo` records a base model there).
os.environ["CLIPFOOD_HOME"] = tempfile.mkdtemp(prefix="clipfood-test-home-")
os.environ.pop("CLIPFOOD_BASE_MODEL", None)

import pytest
import requests

from clipfood_assets.lake import LocalLake, S3Lake

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Preprocessed-image tensors go to a throwaway folder, never the project's .clipfood/.
os.environ.setdefault("CLIPFOOD_CACHE_DIR", tempfile.mkdtemp(prefix="clipfood-test-cache-"))


class S3Server:
    """A moto S3 server in this process, on a random loopback port; can be stopped and restarted."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Start again on the same port (state is kept by moto's in-process backend)."""
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def env(self) -> dict[str, str]:
        return {"MINIO_ENDPOINT": self.endpoint, "MINIO_ACCESS_KEY": "testing", "MINIO_SECRET_KEY": "testing"}


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_lake(s3_server) -> S3Lake:
    s3_server.reset()
    return S3Lake(s3_server.endpoint, "testing", "testing", secure=False, retries=2, backoff=0.05, timeout=5)


@pytest.fixture
def local_lake(tmp_path) -> LocalLake:
    return LocalLake(tmp_path / "lake")


def _minio_lake():
    from clipfood_assets.lake import lake_from_env

    return lake_from_env()


LAKE_KINDS = ["local", "s3"] + (["minio"] if os.environ.get("MINIO_ENDPOINT") else [])


@pytest.fixture(params=LAKE_KINDS)
def lake(request, tmp_path):
    """The same contract runs on every backend."""
    if request.param == "local":
        return LocalLake(tmp_path / "lake")
    if request.param == "s3":
        return request.getfixturevalue("s3_lake")
    return _minio_lake()


@pytest.fixture
def bucket(lake) -> str:
    # Real MinIO keeps state between tests; a fresh bucket per test keeps them apart.
    return f"test-{uuid.uuid4().hex[:12]}"
