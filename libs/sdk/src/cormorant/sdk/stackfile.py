"""``.cormorant/stack.json``: where the local stack's services listen, and its admin key;
``.cormorant/secrets.json``: the stack's private secrets (internal credential, database
passwords), both readable by their owner only; and what an earlier run left running
(``leftovers``), found by recorded pid and command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import psutil

from cormorant.common.lifetime import (
    REPLICA_RECORDS,
    ProcessRecord,
    shown_cmdline,
    stop_processes,
    stop_recorded,
)

STACK_FILE = "stack.json"
SECRETS_FILE = "secrets.json"
INTERNAL_SECRET_FILE = "internal_secret"
"""The internal credential alone, for tools that read a token from a file (Prometheus's
``credentials_file`` for the deployer's replica discovery)."""
PID_FILE = "supervisor.pid"


def write_stack_file(data_dir: Path, content: dict[str, Any]) -> Path:
    """Write the stack file atomically, readable by its owner only (it holds a secret)."""
    return write_private_json(data_dir / STACK_FILE, content)


def read_private_json(path: Path) -> dict[str, Any] | None:
    """A JSON object written by ``write_private_json``, or None when absent or unreadable."""
    try:
        content = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def write_private_json(path: Path, content: dict[str, Any]) -> Path:
    """Write JSON atomically with mode 0600: these files hold keys and tokens."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(content, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def stack_secrets(data_dir: Path) -> dict[str, str]:
    """The stack's secrets, generated the first time and kept after (mode 0600): the internal
    credential of its services, the PostgreSQL superuser's and application role's passwords
    (the embedded cluster keeps them, so they must outlive a restart), and the NATS platform
    and replica users' passwords."""
    from cormorant.common.internal import generate_internal_secret
    from cormorant.common.servers.nats import generate_nats_password
    from cormorant.common.servers.postgres import generate_password

    makers = {
        "internal_secret": generate_internal_secret,
        "postgres_superuser_password": generate_password,
        "postgres_password": generate_password,
        "nats_password": generate_nats_password,
        "nats_replica_password": generate_nats_password,
    }
    path = data_dir / SECRETS_FILE
    found = read_private_json(path) or {}
    secrets = {name: str(found[name]) for name in makers if isinstance(found.get(name), str)}
    if len(secrets) < len(makers):
        secrets = {name: secrets.get(name) or make() for name, make in makers.items()}
        write_private_json(path, {**found, **secrets})
    token = data_dir / INTERNAL_SECRET_FILE
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets["internal_secret"])
    os.chmod(token, 0o600)
    return secrets


def read_stack_file(data_dir: Path) -> dict[str, Any] | None:
    """The stack file's content, or None when the stack never started here."""
    return read_private_json(data_dir / STACK_FILE)


def write_supervisor_pid(data_dir: Path) -> None:
    """Record this process as the stack's supervisor: its pid and command line."""
    (data_dir / PID_FILE).write_text(f"{os.getpid()}\n{json.dumps(sys.orig_argv)}\n")


def read_supervisor_pid(data_dir: Path) -> int | None:
    """PID of the running supervisor, or None when none is running (or the pid now belongs to
    another program)."""
    try:
        first, _, rest = (data_dir / PID_FILE).read_text().partition("\n")
        pid = int(first)
        cmdline = json.loads(rest) if rest.strip() else None
    except (FileNotFoundError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if cmdline is not None and shown_cmdline(process.cmdline()) != cmdline:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return pid
    return pid


def leftovers(data_dir: Path) -> list[ProcessRecord]:
    """The services and servers ``stack.json`` names; ``ProcessRecord.live`` tells which still
    run (the replicas the deployer started are recorded under ``REPLICA_RECORDS``)."""
    stack = read_stack_file(data_dir) or {}
    records = []
    for group in ("services", "servers"):
        for name, info in (stack.get(group) or {}).items():
            pid, cmdline = info.get("pid"), info.get("cmdline")
            if isinstance(pid, int) and isinstance(cmdline, list) and cmdline:
                signal = int(info.get("stop_signal") or 15)
                records.append(ProcessRecord(name, pid, tuple(cmdline), signal))
    return records


def stop_leftovers(data_dir: Path, *, grace_s: float) -> list[str]:
    """Stop whatever an earlier run left running (SIGTERM, SIGKILL after ``grace_s``) and wait
    for it to exit; one line per process stopped, naming it. Services first: a deployer could
    otherwise start replicas again while they are stopped."""
    stopped = stop_processes(leftovers(data_dir), grace_s=grace_s)
    stopped += stop_recorded(data_dir / REPLICA_RECORDS, grace_s=grace_s)
    return [_describe(record) for record in stopped]


def _describe(record: ProcessRecord) -> str:
    endpoint = record.details.get("endpoint")
    if endpoint:
        return f"replica {record.name} of {endpoint} (pid {record.pid})"
    return f"{record.name} (pid {record.pid})"
