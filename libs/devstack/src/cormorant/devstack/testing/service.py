"""One service as a real process in a test: ``python -m cormorant.<name>`` on a free port,
waited on through ``/healthz``, killable like a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import httpx

from cormorant.common.ports import free_port
from cormorant.devstack.testing.waits import eventually


class ServiceUnderTest:
    """``python -m cormorant.<name>`` with this process's environment, ``env`` on top and the
    service's ``CORMORANT_<NAME>_PORT`` set to a free port; its output goes to ``log_path``."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_path: Path, *, stop_timeout: float = 15.0
    ) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.stop_timeout = stop_timeout
        self.env = {
            **os.environ,
            "CORMORANT_LOG_JSON": "false",
            f"CORMORANT_{name.upper().replace('-', '_')}_PORT": str(self.port),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the running process."""
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for it."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"cormorant.{self.name.replace('-', '_')}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self.proc

    async def start(self, within: float = 60.0) -> None:
        """Start the process and wait until its ``/healthz`` answers 200."""
        proc = self.spawn()

        async def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {proc.returncode}:\n{self.log_tail()}"
                )
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    return (await http.get(f"{self.url}/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(healthy, within=within, what=f"{self.name} healthy", every=0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's output."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
