"""Fixtures of the deployer's tests: a deployer on this test's NATS and database, tiny models."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# --import-mode=importlib puts no test folder on sys.path: the test kits need it.
sys.path.insert(0, str(Path(__file__).parent))

from deployer_testkit import DeployerHarness, PlatformSettings, running_deployer

from cormorant.common.internal import generate_internal_secret

TINY_MODEL = """\
import os

ANSWER = "v1"


def predict(x):
    return {"answer": ANSWER, "double": x * 2, "flag": os.environ.get("FLAG")}
"""


@pytest.fixture
def deployer_settings(tmp_path: Path, nats_url: str, database_url: str) -> PlatformSettings:
    """The deployer's and the fleet's settings, with short delays, so a test sees scaling and
    draining within seconds."""
    return PlatformSettings(
        data_dir=tmp_path / "data",
        nats_url=nats_url,
        database_url=database_url,
        log_json=False,
        internal_secret=generate_internal_secret(),
        drain_grace_s=0.2,
        stop_timeout_s=10.0,
        probe_interval_s=0.05,
        monitor_interval_s=0.1,
        restart_backoff_s=0.5,
        scale_down_delay_s=2.0,
        autoscale_window_s=1.0,
        autoscale_interval_s=0.2,
        start_timeout_s=60.0,
        # Replicas start as fresh processes: most tests create endpoints before a template
        # would be ready, and each template's imports cost seconds of CPU. test_template.py
        # runs replicas forked from one.
        preload_modules=[],
    )


@pytest.fixture
async def deployer(deployer_settings: PlatformSettings) -> AsyncIterator[DeployerHarness]:
    """A running deployer; every replica it started is killed afterwards."""
    async with running_deployer(deployer_settings) as harness:
        yield harness


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A directory holding a tiny predict.py: ``predict(x)`` answers ``x * 2`` and more."""
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "predict.py").write_text(TINY_MODEL)
    return directory
