"""Fixtures of the batch service's tests: real deployer and fleet processes beside an in-process
batch service, all on this test's NATS and database."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psutil
import pytest

from cormorant.batch.settings import BatchSettings
from cormorant.batch.testing import BatchHarness
from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import create_engine, session_factory
from cormorant.common.internal import generate_internal_secret
from cormorant.common.ports import free_port
from cormorant.devstack.stack import ServiceProcess, ServiceSpec


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """The data directory the deployer and the batch service share."""
    return tmp_path / "data"


@pytest.fixture
def internal_secret() -> str:
    """The credential the deployer asks of the batch service (and of the tests)."""
    return generate_internal_secret()


@pytest.fixture
def deployer_url(
    data_dir: Path, nats_url: str, database_url: str, tmp_path: Path, internal_secret: str
) -> Iterator[str]:
    """A deployer (``python -m cormorant.deployer``) and the fleet that runs its replicas
    (``python -m cormorant.fleet``), whose replicas stop with it."""
    shared = {
        "CORMORANT_INTERNAL_SECRET": internal_secret,
        "CORMORANT_DATA_DIR": str(data_dir),
        "CORMORANT_NATS_URL": nats_url,
        "CORMORANT_DATABASE_URL": database_url,
        "CORMORANT_LOG_JSON": "false",
    }
    fleet_env = shared | {
        "CORMORANT_FLEET_STOP_REPLICAS_ON_SHUTDOWN": "true",
        # Fresh replica processes: a template's imports would cost seconds of CPU per test.
        "CORMORANT_FLEET_PRELOAD_MODULES": "",
        "CORMORANT_FLEET_PROBE_INTERVAL_S": "0.05",
        "CORMORANT_FLEET_DRAIN_GRACE_S": "0.2",
    }
    fleet = ServiceProcess(
        ServiceSpec("fleet", "cormorant.fleet", free_port()),
        host="127.0.0.1",
        env=fleet_env,
        logs=tmp_path,
        timeout=60,
    )
    fleet.spawn()
    try:
        fleet.wait_ready()
        env = shared | {"CORMORANT_DEPLOYER_FLEET_URL": fleet.url}
        spec = ServiceSpec("deployer", "cormorant.deployer", free_port())
        process = ServiceProcess(spec, host="127.0.0.1", env=env, logs=tmp_path, timeout=60)
        process.spawn()
        try:
            process.wait_ready()
            yield process.url
        finally:
            process.stop(timeout=60)
    finally:
        fleet.stop(timeout=60)
        _kill_replicas(str(data_dir))


def _kill_replicas(marker: str) -> None:
    """SIGKILL any replica still running under ``marker`` (a deployer that had to be killed)."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info.get("cmdline") or []
        if "cormorant.worker" in cmdline and any(marker in part for part in cmdline):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.fixture
def batch_settings(
    data_dir: Path, nats_url: str, database_url: str, deployer_url: str, internal_secret: str
) -> BatchSettings:
    """Small chunks, so a job is seen part-way through; a short idle time."""
    return BatchSettings(
        internal_secret=internal_secret,
        data_dir=data_dir,
        nats_url=nats_url,
        database_url=database_url,
        deployer_url=deployer_url,
        log_json=False,
        chunk_rows=200,
        idle_timeout_s=1.0,
    )


@pytest.fixture
async def batch(batch_settings: BatchSettings) -> AsyncIterator[BatchHarness]:
    """A running batch service beside the deployer."""
    harness = BatchHarness(batch_settings)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture
async def datasets(
    batch_settings: BatchSettings, batch: BatchHarness
) -> AsyncIterator[DatasetStore]:
    """The datasets jobs read and write (the batch service's database and blob store)."""
    engine = create_engine(batch_settings.database_url)
    store = DatasetStore(session_factory(engine), BlobStore(batch_settings.resolved_datasets_url()))
    await store.blobs.prepare()
    yield store
    await engine.dispose()
