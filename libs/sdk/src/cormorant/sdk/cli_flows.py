"""CLI commands of flows: ``cormorant flow run FILE``. ``register(app)`` adds them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console, err
from cormorant.sdk.client import Client

flow_app = typer.Typer(help="Flows: tasks (exec, deploy, rollback...) run in order.",
                       no_args_is_help=True)  # fmt: skip


def _show(run: dict[str, Any]) -> None:
    table = Table(title=f"flow {run['flow']} run {run['id']}: {run['status']}")
    for column in ("task", "type", "status", "seconds", "output"):
        table.add_column(column)
    for task in run["tasks"]:
        output = (task.get("output") or "").strip().splitlines()
        seconds = task.get("duration_s")
        table.add_row(
            task["name"],
            task["type"],
            task["status"],
            "" if seconds is None else f"{seconds:.1f}",
            "\n".join(output[-5:]),
        )
    console.print(table)
    if run.get("error"):
        err.print(f"[red]{run['error']}[/red]", soft_wrap=True)


@flow_app.command("run")
def run(
    file: Annotated[
        Path, typer.Argument(help="The flow file (YAML).", exists=True, dir_okay=False)
    ],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Start it and return.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run as JSON.")] = False,
) -> None:
    """Store FILE as a flow and run it; commands run in FILE's directory."""
    with Client() as client:
        result = api_call(client.flows.run, file, wait=not no_wait)
    if as_json:
        console.print_json(json.dumps(result))
    else:
        _show(result)
    if result["status"] == "failed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``cormorant flow`` to the ``cormorant`` command."""
    app.add_typer(flow_app, name="flow")
