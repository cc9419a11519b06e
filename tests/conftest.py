"""Cross-service scenarios: one local stack for the session, driven like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from cormorant.common.internal import InternalAuth
from cormorant.common.ports import free_port
from cormorant.sdk import Client
from cormorant.sdk.stackfile import SECRETS_FILE, read_private_json

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("deployer", "predictlog", "feedback", "alerts", "batch", "gateway")


@dataclass
class Stack:
    """A running local stack: where the gateway is, the admin key, how to run the CLI."""

    url: str
    admin_key: str
    env: dict[str, str]
    data_dir: Path
    database_url: str

    def client(self) -> Client:
        """An SDK client with the admin key."""
        return Client(self.url, self.admin_key)

    def internal(self) -> InternalAuth:
        """The stack's internal credential, as its services call each other with it."""
        secrets = read_private_json(self.data_dir / SECRETS_FILE) or {}
        return InternalAuth(secrets["internal_secret"])

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the `cormorant` command against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "cormorant.sdk.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


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


def stack_environment(data_dir: Path) -> dict[str, str]:
    """Environment for a stack of its own: data dir and free ports."""
    env = {**os.environ, "CORMORANT_DATA_DIR": str(data_dir)}
    for name in ("nats", "postgres", *SERVICES):
        env[f"CORMORANT_STACK_{name.upper()}_PORT"] = str(free_port())
    env["CORMORANT_STACK_GATEWAY_GRPC_PORT"] = str(free_port())
    return env


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole platform, started with `cormorant up` (short autoscaler delays for tests)."""
    data_dir = tmp_path_factory.mktemp("stack") / "data"
    env = stack_environment(data_dir)
    env["CORMORANT_DEPLOYER_SCALE_DOWN_DELAY_S"] = "4"
    env["CORMORANT_BATCH_IDLE_TIMEOUT_S"] = "2"
    # Stream replicas: a killed one is noticed by its group in 3 s rather than 10.
    env["CORMORANT_KAFKA_BRIDGE_SESSION_TIMEOUT_MS"] = "3000"
    env["CORMORANT_KAFKA_BRIDGE_HEARTBEAT_INTERVAL_MS"] = "500"
    up = subprocess.run(
        [sys.executable, "-m", "cormorant.sdk.cli", "up", "--no-example"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    info = json.loads((data_dir / "stack.json").read_text()) if up.returncode == 0 else {}
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env["CORMORANT_URL"] = info["services"]["gateway"]["url"]
        env["CORMORANT_API_KEY"] = info["admin_key"]
        yield Stack(
            info["services"]["gateway"]["url"],
            info["admin_key"],
            env,
            data_dir,
            info["database_url"],
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "cormorant.sdk.cli", "down"],
            env=env, cwd=ROOT, capture_output=True, timeout=240,
        )  # fmt: skip
