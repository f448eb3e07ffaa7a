"""The environment read in one place: defaults follow CLIPFOOD_HOME, malformed values fall back
or fail clearly, secrets never show in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipfood_assets.settings import ClipfoodSettings, variable_in_use


def test_defaults_follow_the_state_folder(tmp_path):
    settings = ClipfoodSettings.from_env({"CLIPFOOD_HOME": str(tmp_path)})
    assert settings.lake_dir == tmp_path / "lake"
    assert settings.cache_dir == tmp_path / "cache"
    assert settings.chroma_dir == tmp_path / "chroma"
    assert settings.dagster_home == tmp_path / "dagster_home"
    assert settings.lake_backend == "local"
    explicit = ClipfoodSettings.from_env({"CLIPFOOD_HOME": str(tmp_path), "CLIPFOOD_CACHE_DIR": "/elsewhere"})
    assert explicit.cache_dir == Path("/elsewhere")


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5", "   "])
def test_a_malformed_thread_count_is_unset(value):
    assert ClipfoodSettings.from_env({"CLIPFOOD_TORCH_THREADS": value}).cpu_threads is None
    assert ClipfoodSettings.from_env({"CLIPFOOD_TORCH_THREADS": value, "OMP_NUM_THREADS": "3"}).cpu_threads == 3


@pytest.mark.parametrize(("secure", "endpoint", "tls"), [
    ("true", "minio:9000", True), ("ON", "minio:9000", True), ("maybe", "minio:9000", False),
    ("", "https://minio:9000", True), ("0", "http://minio:9000", False),
])
def test_tls_from_the_flag_or_the_endpoint(secure, endpoint, tls):
    settings = ClipfoodSettings.from_env({"MINIO_ENDPOINT": endpoint, "MINIO_SECURE": secure})
    assert (settings.lake_backend, settings.minio_tls) == ("minio", tls)


def test_notebook_credential_names_are_accepted_and_never_printed():
    settings = ClipfoodSettings.from_env({"MINIO_ENDPOINT": "m:9000", "MINIO_USER": "alice", "MINIO_PASSWORD": "s3cr3t"})
    assert settings.minio_access_key.get_secret_value() == "alice"
    assert "s3cr3t" not in repr(settings) and "alice" not in repr(settings)
    env = {"MINIO_USER": "alice", "MINIO_ACCESS_KEY": ""}
    assert variable_in_use(("MINIO_ACCESS_KEY", "MINIO_USER"), env) == "MINIO_USER"
    assert variable_in_use(("MINIO_ACCESS_KEY", "MINIO_USER"), {}) is None


def test_blank_values_are_unset():
    settings = ClipfoodSettings.from_env({"MINIO_ENDPOINT": "  ", "CLIPFOOD_BASE_MODEL": ""})
    assert settings.lake_backend == "local" and settings.base_model is None
