"""docker/dagster.yaml, the compose deployment's instance, loaded on a real PostgreSQL with exactly
what the image installs (the `deploy` extra)."""

from __future__ import annotations

import importlib.metadata as md
import tomllib

import dagster as dg
import pytest
from packaging.requirements import Requirement

from clipfood_assets_tests.deployment import topology


@pytest.fixture
def instance_env(postgres, database, monkeypatch):
    for name, value in postgres.env(database).items():
        monkeypatch.setenv(name, value)
    return postgres.env(database)


def _instance(tmp_path, config) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(topology.write_home(tmp_path / "home", config)))


def test_the_image_installs_a_database_driver_that_dagster_postgres_can_use():
    extras = tomllib.loads((topology.REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    deploy = {Requirement(r).name: Requirement(r) for r in extras["deploy"]}
    # What this venv has is what the image installs: the topology tests below run on it.
    for name, requirement in deploy.items():
        assert requirement.specifier.contains(md.version(name), prereleases=True), (name, md.version(name))
    # SQLAlchemy 2.1 would make `postgresql://` need psycopg 3, which nothing installs.
    assert not deploy["sqlalchemy"].specifier.contains("2.1.0")
    import psycopg2  # noqa: F401 - dagster-postgres's driver

    import dagster_postgres
    assert md.version("dagster-postgres") == "0.29.27" and dagster_postgres.__name__


def test_the_compose_instance_stores_runs_events_and_pool_slots_in_postgres(tmp_path, instance_env, postgres,
                                                                            database):
    instance = _instance(tmp_path, topology.compose_instance())
    from dagster_docker import DockerRunLauncher
    from dagster_postgres import PostgresRunStorage

    assert isinstance(instance.run_launcher, DockerRunLauncher)
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert instance.run_monitoring_enabled and instance.run_retries_enabled
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert not instance.run_retries_retry_on_asset_or_op_failure  # refusals are not retried

    run = instance.create_run_for_job(dg.GraphDefinition("noop", node_defs=[]).to_job(), run_id=None)
    instance.report_engine_event("hello from the test", run)
    instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    again = dg.DagsterInstance.from_config(str(tmp_path / "home"))  # another process's view
    assert again.get_run_by_id(run.run_id) is not None
    assert any("hello from the test" in (r.dagster_event.message or "") for r in again.all_logs(run.run_id))
    assert postgres.query(database, "select count(*) from runs").strip() == "1"
    instance.dispose()
    again.dispose()


def test_the_process_topology_changes_only_the_run_launcher_and_the_monitoring_intervals():
    compose, local = topology.compose_instance(), topology.process_instance()
    assert {k: v for k, v in compose.items() if k not in ("run_launcher", "run_monitoring")} == \
        {k: v for k, v in local.items() if k not in ("run_launcher", "run_monitoring")}
    assert set(compose["run_monitoring"]) == set(local["run_monitoring"])
    assert compose["run_monitoring"]["enabled"] and local["run_monitoring"]["enabled"]
    assert compose["run_launcher"]["class"] == "DockerRunLauncher"
    assert local["run_launcher"]["class"] == "ProcessRunLauncher"


def test_the_gpu_pool_is_limited_per_run_so_no_container_starts_beyond_it():
    compose = topology.compose_instance()
    assert compose["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
