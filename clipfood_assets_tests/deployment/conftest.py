"""PostgreSQL for the deployment tests (skipped, saying why, where the server binaries are missing)."""

import uuid

import pytest

from clipfood_assets_tests.deployment.postgres import Postgres, postgres_bindir


@pytest.fixture(scope="session")
def postgres():
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binaries on this machine (.ci/run installs Debian's postgresql)")
    server = Postgres()
    yield server
    server.close()


@pytest.fixture
def database(postgres) -> str:
    """A new, empty database: a fresh instance."""
    return postgres.create_database(f"dagster_{uuid.uuid4().hex[:10]}")
