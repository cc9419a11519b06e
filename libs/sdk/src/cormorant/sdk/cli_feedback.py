"""``cormorant feedback create/list/show/run/stop``; ``register(app)`` adds them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console, err
from cormorant.sdk.client import Client

feedback_app = typer.Typer(
    help="Feedback loops: an endpoint's logged predictions into a dataset, now or on a schedule.",
    no_args_is_help=True,
)


def _schedule_text(schedule: dict[str, Any]) -> str:
    if "every" in schedule:
        return f"every {schedule['every']}"
    if "on" in schedule:
        on = schedule["on"]
        return f"on {','.join(on['days'])} {on['time']} {on['timezone']}"
    return "now"


def _when(value: str | None) -> str:
    return "-" if value is None else value


@feedback_app.command("create")
def create(
    slug: str,
    dataset: Annotated[str, typer.Option(help="The dataset the exports go into.")],
    now: Annotated[bool, typer.Option("--now", help="Export once, now.")] = False,
    every: Annotated[str | None, typer.Option(help="Export every interval: 15m, 6h, 1d.")] = None,
    on: Annotated[
        str | None,
        typer.Option(help="Export on days at a local time: 'mon,thu 02:30 Europe/Berlin'."),
    ] = None,
    format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    include: Annotated[
        str | None,
        typer.Option(
            help="Columns besides request_id and received_at, comma-separated "
            "(input,output,error,status,latency_ms,version,trace_id,metrics)."
        ),
    ] = None,
) -> None:
    """Create a feedback loop of endpoint SLUG."""
    if sum((now, every is not None, on is not None)) != 1:
        err.print("[red]give exactly one of --now, --every INTERVAL, --on 'DAYS HH:MM ZONE'[/red]")
        raise typer.Exit(2)
    columns = None if include is None else [c.strip() for c in include.split(",") if c.strip()]
    with Client() as client:
        loop = api_call(
            client.feedback.create, slug, dataset, now=now, every=every, on=on,
            format=format, include=columns,
        )  # fmt: skip
    console.print(
        f"Feedback loop {loop['id']} of {slug} into {dataset} ({_schedule_text(loop['schedule'])});"
        f" next run {_when(loop['next_run'])}.",
        markup=False,
    )


@feedback_app.command("list")
def list_loops(slug: Annotated[str | None, typer.Argument()] = None) -> None:
    """The feedback loops of SLUG (of every endpoint without it)."""
    with Client() as client:
        loops = api_call(client.feedback.list, slug)
    table = Table()
    for column in ("id", "endpoint", "dataset", "schedule", "state", "last run", "next run"):
        table.add_column(column)
    for loop in loops:
        last = loop["last_run"]
        last_text = (
            "-"
            if last is None
            else f"{last['finished_at']} ({last['status']}, {last['rows']} rows)"
        )
        table.add_row(
            loop["id"], loop["endpoint"], loop["dataset"], _schedule_text(loop["schedule"]),
            loop["state"], last_text, _when(loop["next_run"]),
        )  # fmt: skip
    console.print(table)


@feedback_app.command("show")
def show(slug: str, loop_id: str) -> None:
    """One feedback loop with its runs, newest first."""
    with Client() as client:
        loop = api_call(client.feedback.get, slug, loop_id)
    console.print(
        f"{loop['id']}: {loop['endpoint']} -> {loop['dataset']} ({loop['format']}),"
        f" {_schedule_text(loop['schedule'])}, {loop['state']}; next run {_when(loop['next_run'])}",
        markup=False,
    )
    table = Table()
    for column in ("started", "trigger", "status", "rows", "received from", "to", "version", "s"):
        table.add_column(column)
    for run in loop["runs"]:
        version = run["dataset_version"]
        table.add_row(
            run["started_at"], run["trigger"], run["status"], str(run["rows"]),
            _when(run["first_received_at"]), _when(run["last_received_at"]),
            "-" if version is None else f"{loop['dataset']}@{version}",
            f"{run['duration_s']:.2f}",
        )  # fmt: skip
    console.print(table)


@feedback_app.command("run")
def run(slug: str, loop_id: str) -> None:
    """Export what is new now."""
    with Client() as client:
        done = api_call(client.feedback.run, slug, loop_id)
    if done["status"] != "succeeded":
        err.print(f"[red]run failed: {done['error']}[/red]", markup=True)
        raise typer.Exit(1)
    where = (
        "nothing new" if done["dataset_version"] is None else f"version {done['dataset_version']}"
    )
    console.print(f"Exported {done['rows']} rows ({where}).", markup=False)


@feedback_app.command("stop")
def stop(slug: str, loop_id: str) -> None:
    """Stop a feedback loop: no run starts after this returns."""
    with Client() as client:
        api_call(client.feedback.stop, slug, loop_id)
    console.print(f"Feedback loop {loop_id} stopped.", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``cormorant feedback`` to ``app``."""
    app.add_typer(feedback_app, name="feedback")
