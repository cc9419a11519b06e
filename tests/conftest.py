"""Cross-service scenarios: one local stack for the session, driven like a user would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cormorant.devstack.testing.running import Stack, running_stack

__all__ = ["ROOT", "Stack", "processes_under", "running_stack"]

ROOT = Path(__file__).resolve().parent.parent


def processes_under(data_dir: Path) -> list[str]:
    """Every live process whose command line or environment mentions the stack's data dir."""
    found = []
    marker = str(data_dir)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.environ() if marker not in cmdline else {}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if marker in cmdline or environ.get("CORMORANT_DATA_DIR") == marker:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole platform, started with `cormorant up` (short autoscaler delays for tests)."""
    data_dir = tmp_path_factory.mktemp("stack") / "data"
    settings = {
        "CORMORANT_FLEET_SCALE_DOWN_DELAY_S": "4",
        "CORMORANT_BATCH_IDLE_TIMEOUT_S": "2",
        # Stream replicas: a killed one is noticed by its group in 3 s rather than 10.
        "CORMORANT_KAFKA_BRIDGE_SESSION_TIMEOUT_MS": "3000",
        "CORMORANT_KAFKA_BRIDGE_HEARTBEAT_INTERVAL_MS": "500",
    }
    with running_stack(data_dir, settings, cwd=ROOT) as running:
        yield running
