"""``client.flows``: store flow files and run them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cormorant.sdk.transport import Requester

FINISHED = ("succeeded", "failed", "cancelled")


class Flows:
    """Flows: ``client.flows.run("flow.yaml")`` stores the file and runs it to the end."""

    def __init__(self, client: Requester) -> None:
        self._client = client

    def create(self, path: str | Path) -> dict[str, Any]:
        """Store the flow file at ``path``; its directory is where its commands run."""
        file = Path(path).absolute()
        body = {"yaml": file.read_text(), "directory": str(file.parent)}
        result: dict[str, Any] = self._client.request("POST", "/api/v1/flows", json=body)
        return result

    def start(self, name: str) -> dict[str, Any]:
        """Start a run of the stored flow ``name``."""
        result: dict[str, Any] = self._client.request("POST", f"/api/v1/flows/{name}/runs")
        return result

    def get_run(self, name: str, run_id: str) -> dict[str, Any]:
        """One run with each task's status, output and duration."""
        result: dict[str, Any] = self._client.request("GET", f"/api/v1/flows/{name}/runs/{run_id}")
        return result

    def runs(self, name: str) -> list[dict[str, Any]]:
        """The flow's latest runs, newest first."""
        result = self._client.request("GET", f"/api/v1/flows/{name}/runs")
        runs: list[dict[str, Any]] = result["runs"]
        return runs

    def run(
        self, flow: str | Path, *, wait: bool = True, timeout: float = 3600.0
    ) -> dict[str, Any]:
        """Run a flow: a flow file's path (stored first) or a stored flow's name; with ``wait``
        the finished run, else the run just started."""
        name = str(flow)
        if Path(flow).is_file():
            name = self.create(flow)["name"]
        run = self.start(name)
        deadline = time.monotonic() + timeout
        while wait and run["status"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow {name} run {run['id']} still {run['status']}")
            time.sleep(0.5)
            run = self.get_run(name, run["id"])
        return run
