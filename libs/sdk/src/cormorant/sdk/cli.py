"""The ``cormorant`` command line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from rich.console import Console
from rich.table import Table

from cormorant.sdk.stack import StackSettings
from cormorant.sdk.stackfile import read_stack_file, read_supervisor_pid

app = typer.Typer(help="Cormorant: serve Python predict functions.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _data_dir() -> Path:
    return StackSettings().data_dir.absolute()


def _health(url: str) -> str:
    try:
        status = httpx.get(url + "/healthz", timeout=2.0).status_code
    except httpx.HTTPError:
        return "down"
    return "ok" if status == 200 else f"HTTP {status}"


def _print_stack(stack: dict[str, Any]) -> None:
    table = Table(title=f"Cormorant local stack: {stack.get('state', 'unknown')}")
    table.add_column("service")
    table.add_column("url")
    table.add_column("health")
    for name, info in stack.get("services", {}).items():
        table.add_row(name, info["url"], _health(info["url"]))
    console.print(table)
    console.print(f"NATS:       {stack.get('nats_url')}")
    console.print(f"PostgreSQL: {stack.get('database_url')}")
    console.print(f"Admin key:  {stack.get('admin_key')}")
    console.print(f"Stack file: {Path(stack.get('data_dir', '.')) / 'stack.json'}")


@app.command()
def up(
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the supervisor in this terminal.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the stack.")] = 180.0,
) -> None:
    """Start NATS, PostgreSQL and every service; print their URLs."""
    data_dir = _data_dir()
    if read_supervisor_pid(data_dir) is not None:
        console.print("[yellow]The stack is already running.[/yellow]")
        stack = read_stack_file(data_dir)
        if stack:
            _print_stack(stack)
        return
    if foreground:
        from cormorant.sdk.stack import main as supervise

        supervise()
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    stack_file = data_dir / "stack.json"
    before = stack_file.stat().st_mtime if stack_file.exists() else 0.0
    started = time.monotonic()
    with open(logs / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cormorant.sdk.stack"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    with console.status("Starting the stack…"):
        while time.monotonic() - started < timeout:
            stack = read_stack_file(data_dir)
            fresh = stack_file.exists() and stack_file.stat().st_mtime > before
            if stack and fresh and stack.get("state") in ("ready", "failed", "stopped"):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    stack = read_stack_file(data_dir)
    if not stack or stack.get("state") != "ready" or proc.poll() is not None:
        err.print("[red]The stack did not start.[/red] Last lines of the supervisor's log:")
        err.print((logs / "supervisor.log").read_text(errors="replace")[-4000:])
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        raise typer.Exit(1)
    console.print(f"[green]Stack ready in {time.monotonic() - started:.1f}s.[/green]")
    _print_stack(stack)


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing.")] = 90.0,
) -> None:
    """Stop every process the stack started."""
    data_dir = _data_dir()
    pid = read_supervisor_pid(data_dir)
    if pid is None:
        console.print("The stack is not running.")
        return
    try:
        supervisor = psutil.Process(pid)
        supervisor.terminate()
        with console.status("Stopping the stack…"):
            supervisor.wait(timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        err.print("[yellow]The supervisor did not stop in time; killing what it started.[/yellow]")
        _kill_everything(data_dir, pid)
    console.print("[green]Stack stopped.[/green]")


def _kill_everything(data_dir: Path, supervisor_pid: int) -> None:
    stack = read_stack_file(data_dir) or {}
    pids = [info.get("pid") for info in stack.get("services", {}).values()]
    pids += [info.get("pid") for info in stack.get("servers", {}).values()]
    for pid in [supervisor_pid, *pids]:
        if isinstance(pid, int):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    (data_dir / "supervisor.pid").unlink(missing_ok=True)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the stack file as JSON.")] = False,
) -> None:
    """Show the local stack's services, their health and the admin key."""
    data_dir = _data_dir()
    stack = read_stack_file(data_dir)
    if stack is None:
        err.print("The stack has never started here: run `make up`.")
        raise typer.Exit(1)
    if read_supervisor_pid(data_dir) is None and stack.get("state") == "ready":
        stack["state"] = "stopped"
    if as_json:
        console.print_json(json.dumps(stack))
        return
    _print_stack(stack)


def main() -> None:
    """Entry point of the ``cormorant`` command."""
    app()


if __name__ == "__main__":
    main()
