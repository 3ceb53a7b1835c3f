"""Shared fixtures: real registries on both backends, stores on real directories.

PostgreSQL: set TRAINGUARD_TEST_POSTGRES_URL (``.ci/run`` sets it to the machine's server). Each test
session creates its own database on that server and drops it at the end, so runs of the suite never see
each other's rows. With TRAINGUARD_REQUIRE_POSTGRES=1 (CI) an unreachable server fails the suite instead of
skipping its PostgreSQL half.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import SeaweedS3, seaweed_s3

from trainguard import CheckpointStore, Registry

PG_ENV = "TRAINGUARD_TEST_POSTGRES_URL"
REQUIRE_PG = os.environ.get("TRAINGUARD_REQUIRE_POSTGRES") == "1"


def pytest_report_header() -> list[str]:
    url = os.environ.get(PG_ENV)
    if url:
        return [f"postgresql: {url} (required: {REQUIRE_PG})"]
    return [f"postgresql: {PG_ENV} is not set - the PostgreSQL half of the registry suite is skipped"]


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        if REQUIRE_PG:
            pytest.fail(f"TRAINGUARD_REQUIRE_POSTGRES=1 but {PG_ENV} is not set")
        pytest.skip(f"{PG_ENV} is not set")
    import psycopg

    name = f"trainguard_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = base.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        message = f"PostgreSQL at {base} is unreachable: {error}"
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message)
    prefix = admin_url.rsplit("/", 1)[0]
    try:
        yield f"{prefix}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The conformance suite's parameter: every test using it runs on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return str(request.getfixturevalue("pg_session_url"))


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = Registry.open(registry_url)
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def run_name() -> str:
    # Unique per test: the PostgreSQL database is shared by the whole session.
    return f"run-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(tmp_path: Path, registry: Registry, run_name: str) -> Iterator[CheckpointStore]:
    with CheckpointStore(tmp_path / "store", run=run_name, registry=registry) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path, run_name: str) -> Iterator[CheckpointStore]:
    with CheckpointStore(tmp_path / "store", run=run_name) as s:
        yield s


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server for the session's object-storage tests (each uses a prefix or bucket of its
    own; a test that kills the server starts its own). Fails, never skips, when it cannot start."""
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server
