"""docker-compose.yml cannot run here (no Docker engine); check the wiring the code expects."""

import re

import yaml

from clipfood_assets_tests import REPO_ROOT


def _compose():
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_services_ports_and_healthchecks():
    services = _compose()["services"]
    assert {"minio", "create-buckets", "postgres", "dagster-webserver", "dagster-daemon"} <= set(services)
    assert "9000:9000" in services["minio"]["ports"]
    assert "3000:3000" in services["dagster-webserver"]["ports"]
    assert "healthcheck" in services["minio"] and "healthcheck" in services["postgres"]
    assert services["dagster-webserver"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"


def test_buckets_are_the_zones_the_code_uses():
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE, TRUSTED_ZONE

    entry = _compose()["services"]["create-buckets"]["entrypoint"]
    assert f"lake/{TRUSTED_ZONE}" in entry and f"lake/{FINE_TUNING_ZONE}" in entry


def test_dagster_services_get_the_lake_env_the_code_reads():
    services = _compose()["services"]
    for name in ("dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert env["MINIO_ENDPOINT"] == "minio:9000"
        assert env["MINIO_ACCESS_KEY"] == "${MINIO_ACCESS_KEY}" and env["MINIO_SECRET_KEY"] == "${MINIO_SECRET_KEY}"
        assert "workspace.yaml" in services[name]["command"]


def test_every_variable_is_in_env_example_and_no_secret_is_committed():
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    example = dict(
        line.split("=", 1) for line in (REPO_ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert used <= set(example), used - set(example)
    assert all(("change-me" in v) for k, v in example.items() if "PASSWORD" in k or "SECRET" in k)
    assert ".env" in (REPO_ROOT / ".gitignore").read_text().split()


def test_the_chroma_server_is_the_index_the_dagster_services_use():
    from clipfood_assets.exploitation.index import CHROMA_URL_ENV, index_location_from_env
    from clipfood_assets.lake.layout import EXPLOITATION_ZONE

    services = _compose()["services"]
    chroma = services["chroma"]
    assert chroma["image"].startswith("chromadb/chroma:1.")  # the client is chromadb>=1,<2
    assert "8000:8000" in chroma["ports"] and "healthcheck" in chroma
    assert any(volume.endswith(":/data") for volume in chroma["volumes"])
    assert str(chroma["environment"]["ANONYMIZED_TELEMETRY"]).lower() == "false"
    assert f"lake/{EXPLOITATION_ZONE}" in services["create-buckets"]["entrypoint"]
    for name in ("dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        location = index_location_from_env({CHROMA_URL_ENV: env[CHROMA_URL_ENV]})
        assert location.url == "http://chroma:8000" and location.path is None
        assert services[name]["depends_on"]["chroma"]["condition"] == "service_healthy"
