"""A whole local stack of a test's (or a benchmark's) own: ``cormorant up`` on free ports in a
data dir of its own, the CLI and an SDK client pointed at it, ``cormorant down`` after."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cormorant.common.internal import InternalAuth
from cormorant.common.ports import free_port
from cormorant.devstack.stack import StackSettings, service_specs
from cormorant.sdk import Client
from cormorant.sdk.stackfile import SECRETS_FILE, read_private_json, read_stack_file

_CLI = [sys.executable, "-m", "cormorant.sdk.cli"]


class StackStartError(RuntimeError):
    """``cormorant up`` failed; the message carries what it printed."""


@dataclass
class Stack:
    """A running local stack: where the gateway is, the admin key, how to run the CLI."""

    url: str
    admin_key: str
    env: dict[str, str]
    data_dir: Path
    database_url: str
    cwd: Path
    """Where the CLI runs (relative model paths are read from there)."""

    def client(self) -> Client:
        """An SDK client with the admin key."""
        return Client(self.url, self.admin_key)

    def internal(self) -> InternalAuth:
        """The stack's internal credential, as its services call each other with it."""
        secrets = read_private_json(self.data_dir / SECRETS_FILE) or {}
        return InternalAuth(secrets["internal_secret"])

    def described(self) -> dict[str, Any]:
        """The stack file now: its services' and servers' URLs and pids (they change on a
        restart)."""
        return read_stack_file(self.data_dir) or {}

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        """Run the `cormorant` command against this stack."""
        return subprocess.run(
            [*_CLI, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def stack_environment(data_dir: Path) -> dict[str, str]:
    """Environment for a stack of its own: this process's, the data dir and free ports."""
    env = {**os.environ, "CORMORANT_DATA_DIR": str(data_dir)}
    ports = ["nats", "postgres", *(spec.name for spec in service_specs(StackSettings()))]
    for name in ports:
        env[f"CORMORANT_STACK_{name.upper()}_PORT"] = str(free_port())
    env["CORMORANT_STACK_GATEWAY_GRPC_PORT"] = str(free_port())
    return env


@contextlib.contextmanager
def running_stack(
    data_dir: Path,
    settings: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    timeout: float = 240,
) -> Iterator[Stack]:
    """``cormorant up --no-example`` on free ports with its data in ``data_dir`` and
    ``settings`` (``CORMORANT_*`` variables) on top; ``cormorant down`` when it ends."""
    env = stack_environment(data_dir) | dict(settings or {})
    workdir = cwd or Path.cwd()
    up = subprocess.run(
        [*_CLI, "up", "--no-example"], env=env, cwd=workdir, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    try:
        info = read_stack_file(data_dir) if up.returncode == 0 else None
        if info is None:
            raise StackStartError(f"the stack did not start:\n{up.stdout}{up.stderr}")
        env["CORMORANT_URL"] = info["services"]["gateway"]["url"]
        env["CORMORANT_API_KEY"] = info["admin_key"]
        yield Stack(
            env["CORMORANT_URL"], info["admin_key"], env, data_dir, info["database_url"], workdir
        )
    finally:
        subprocess.run([*_CLI, "down"], env=env, cwd=workdir, capture_output=True, timeout=timeout)
