"""The lake resource is chosen per environment when the definitions are built, secrets by reference."""

import dagster as dg

from clipfood_assets.definitions import build_resources
from clipfood_assets.lake import LocalLake, S3Lake


def test_with_minio_configured_the_lake_resource_names_the_backend_and_references_the_keys(monkeypatch):
    monkeypatch.setenv("MINIO_ENDPOINT", "https://minio.example:9000")
    monkeypatch.delenv("MINIO_ACCESS_KEY", raising=False)
    monkeypatch.delenv("MINIO_SECRET_KEY", raising=False)
    monkeypatch.setenv("MINIO_USER", "user-value")  # the original notebooks' names
    monkeypatch.setenv("MINIO_PASSWORD", "password-value")
    lake = build_resources(base_model="/m")["lake"]
    assert (lake.backend, lake.endpoint, lake.secure) == ("minio", "https://minio.example:9000", True)
    assert isinstance(lake.access_key, dg.EnvVar) and lake.access_key.env_var_name == "MINIO_USER"
    assert isinstance(lake.secret_key, dg.EnvVar) and lake.secret_key.env_var_name == "MINIO_PASSWORD"
    assert "user-value" not in repr(lake) and "password-value" not in repr(lake)
    with dg.build_resources({"lake": lake}) as resources:  # Dagster reads the variables when a run opens it
        assert isinstance(resources.lake.get_lake(), S3Lake)
        assert resources.lake.access_key == "user-value"


def test_without_minio_the_lake_resource_is_the_embedded_lake_in_its_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    monkeypatch.setenv("CLIPFOOD_LAKE_DIR", str(tmp_path / "from-env"))
    assert build_resources(base_model="/m")["lake"].local_dir == str(tmp_path / "from-env")
    lake = build_resources(lake_dir=str(tmp_path / "given"), base_model="/m")["lake"]
    assert (lake.backend, lake.local_dir, lake.access_key) == ("local", str(tmp_path / "given"), None)
    assert isinstance(lake.get_lake(), LocalLake) and lake.get_lake().root == (tmp_path / "given").resolve()
