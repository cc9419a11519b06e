"""Helpers of the worker tests: a real one-worker replica whose master reports deaths."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cormorant.devstack.testing.waits import wait_healthy

ROOT = Path(__file__).resolve().parents[3]
SRC = [ROOT / "libs/common/src", ROOT / "libs/sdk/src", ROOT / "services/worker/src"]
# A bound on readiness on a loaded machine, not a timing claim.
START_TIMEOUT = 120.0


@dataclass
class DyingReplica:
    """A replica process (gunicorn master, one worker) with a one-second deadline."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    deaths: Path
    """Where the master writes one JSON line per worker death."""

    def predict(self, value: str) -> httpx.Response:
        """POST ``value`` as the input of ``/predict``."""
        return httpx.post(f"{self.url}/predict", json={"input_params": value}, timeout=30)

    def stop(self) -> list[dict[str, Any]]:
        """Stop the replica; the deaths its master reported (the last ones are written by then)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return [json.loads(line) for line in self.deaths.read_text().splitlines()]

    def tail(self) -> str:
        """The end of the replica's output, for a failure message."""
        return self.log.read_text()[-3000:]

    def wait_ready(self) -> None:
        """Wait until ``/healthz`` answers 200; fail if the replica exits first."""
        wait_healthy(self.url, self.proc, self.log, name="the worker", within=START_TIMEOUT)
