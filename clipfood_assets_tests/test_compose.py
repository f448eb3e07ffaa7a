"""docker-compose.yml cannot run here (no Docker engine); check the wiring the code expects."""

import re
import shutil
import subprocess

import pytest
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
    # The code server waits for the buckets; the webserver and the daemon wait for the code server.
    assert services["user-code"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"


def test_buckets_are_the_zones_the_code_uses():
    from clipfood_assets.lake.layout import FINE_TUNING_ZONE, TRUSTED_ZONE

    entry = _compose()["services"]["create-buckets"]["entrypoint"]
    assert f"lake/{TRUSTED_ZONE}" in entry and f"lake/{FINE_TUNING_ZONE}" in entry


def test_dagster_services_get_the_lake_env_the_code_reads():
    services = _compose()["services"]
    for name in ("user-code", "dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        assert env["MINIO_ENDPOINT"] == "minio:9000"
        assert env["MINIO_ACCESS_KEY"] == "${MINIO_ACCESS_KEY}" and env["MINIO_SECRET_KEY"] == "${MINIO_SECRET_KEY}"


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
    for name in ("user-code", "dagster-webserver", "dagster-daemon"):
        env = services[name]["environment"]
        location = index_location_from_env({CHROMA_URL_ENV: env[CHROMA_URL_ENV]})
        assert location.url == "http://chroma:8000" and location.path is None
    assert services["user-code"]["depends_on"]["chroma"]["condition"] == "service_healthy"


# --- the topology of Dagster's reference Docker deployment, validated by a real compose parser ---

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(DOCKER_COMPOSE is None,
                                   reason="no docker-compose (.ci/run installs Debian's docker-compose)")


def _config(*files: str) -> dict:
    """`docker-compose config` of these files with .env.example's values: what the engine would run."""
    args = [DOCKER_COMPOSE, "--env-file", str(REPO_ROOT / ".env.example")]
    for name in files:
        args += ["-f", str(REPO_ROOT / name)]
    done = subprocess.run([*args, "config"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _instance(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "docker" / name).read_text())


@needs_compose
def test_the_cpu_deployment_is_dagsters_reference_topology():
    services = _config("docker-compose.yml")["services"]
    code = services["user-code"]
    assert code["command"][:3] == ["dagster", "code-server", "start"] and "clipfood_assets.definitions" in code["command"]
    assert "download.pytorch.org/whl/cpu" in code["build"]["args"]["TORCH_INDEX_URL"]
    workspace = yaml.safe_load((REPO_ROOT / "docker" / "workspace.yaml").read_text())
    assert list(workspace["load_from"][0]) == ["grpc_server"]  # webserver and daemon never import the code
    for name in ("dagster-webserver", "dagster-daemon"):
        service = services[name]
        assert service["image"] == code["image"] and "build" not in service  # one image, built once
        assert "/opt/dagster/workspace.yaml" in " ".join(service["command"])
        assert service["environment"]["DAGSTER_CODE_SERVER_HOST"] == "user-code"
        assert service["depends_on"]["user-code"]["condition"] == "service_healthy"
        assert "/var/run/docker.sock:/var/run/docker.sock" in [_volume(v) for v in service["volumes"]]
    # The gpu pool's limit is on the instance before the daemon's queue first looks at it.
    from clipfood_assets.defs.meta import GPU_POOL, GPU_POOL_LIMIT

    assert f"dagster instance concurrency set {GPU_POOL} {GPU_POOL_LIMIT} && exec dagster-daemon run" in \
        services["dagster-daemon"]["command"][-1]
    # Run containers: the code server's image, on the compose network, with the variables by name only.
    launcher = _instance("dagster.yaml")["run_launcher"]
    assert launcher["class"] == "DockerRunLauncher"
    assert code["environment"]["DAGSTER_CURRENT_IMAGE"] == code["image"]
    assert launcher["config"]["network"] == _config("docker-compose.yml")["networks"]["clipfood"]["name"]
    assert set(launcher["config"]["env_vars"]) <= set(code["environment"])
    assert all("=" not in name for name in launcher["config"]["env_vars"])  # values never in the instance file
    assert any(v.startswith("clipfood_cache:") for v in launcher["config"]["container_kwargs"]["volumes"])


def _volume(volume) -> str:
    text = volume if isinstance(volume, str) else f"{volume['source']}:{volume['target']}"
    return text.removesuffix(":rw")


@needs_compose
def test_the_gpu_variant_builds_cuda_torch_and_gives_run_containers_the_gpus():
    services = _config("docker-compose.yml", "docker-compose.gpu.yml")["services"]
    index = services["user-code"]["build"]["args"]["TORCH_INDEX_URL"]
    assert re.search(r"/whl/cu\d+$", index), index
    devices = services["user-code"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["environment"]["DAGSTER_HOME"] == "/opt/dagster/home-gpu"
        assert services[name]["image"] == services["user-code"]["image"] != "clipfood_assets:cpu"
    # The GPU instance is the CPU one plus the run containers' device request, nothing else.
    cpu, gpu = _instance("dagster.yaml"), _instance("dagster.gpu.yaml")
    requests = gpu["run_launcher"]["config"]["container_kwargs"].pop("device_requests")
    assert gpu == cpu
    assert requests == [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}]
    import docker.types  # what dagster-docker hands them to: they must build a DeviceRequest

    assert docker.types.DeviceRequest(**requests[0])["Driver"] == "nvidia"


def test_the_image_is_built_from_the_wheel_with_the_torch_index_as_a_build_argument():
    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text, re.M)
    assert re.search(r'pip install .*"torch==2\.13\.0" --index-url "\$\{TORCH_INDEX_URL\}"', text)
    assert "pip wheel" in text and "[deploy]" in text and "-e ." not in text
    for copied in re.findall(r"^COPY (docker/\S+)", text, re.M):
        assert (REPO_ROOT / copied).exists(), copied
    # The image's torch is the one pyproject.toml pins.
    assert '"torch==2.13.0"' in (REPO_ROOT / "pyproject.toml").read_text()
