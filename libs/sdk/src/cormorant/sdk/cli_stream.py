"""``cormorant stream``: deploy a model on Kafka topics, show its lag and replicas, swap it."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console, key_values, source_arg
from cormorant.sdk.client import Client
from cormorant.sdk.streams import Streams

stream_app = typer.Typer(
    help="Stream endpoints: predict every message of Kafka topics.", no_args_is_help=True
)


@stream_app.command("deploy")
def deploy(
    source: Annotated[str, typer.Argument(help="Directory (or git URL) of the model's code.")],
    name: Annotated[str, typer.Option(help="Endpoint name; its slug derives from it.")],
    input_topic: Annotated[
        list[str], typer.Option("--input-topic", help="Topic to consume (repeat).")
    ],
    output_topic: Annotated[str, typer.Option(help="Topic the predictions go to.")],
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (default: the deployer's).")
    ] = None,
    dlq_topic: Annotated[str | None, typer.Option(help="Default: <output>.dlq.")] = None,
    security: Annotated[
        list[str] | None, typer.Option("--security", help="SASL/SSL KEY=VALUE (repeat).")
    ] = None,
    file: Annotated[str, typer.Option(help="File holding the predict function.")] = "predict.py",
    function: Annotated[str, typer.Option(help="Name of the predict function.")] = "predict",
    min_replicas: Annotated[int | None, typer.Option("--min", help="Fewest replicas.")] = None,
    max_replicas: Annotated[
        int | None, typer.Option("--max", help="Most replicas (≤ input partitions).")
    ] = None,
    lag_target: Annotated[
        float | None, typer.Option(help="Consumer lag per replica to scale on (messages).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the endpoint streams.")] = True,
) -> None:
    """Predict every message of the input topics into the output topic."""
    source_value = source_arg(source)
    with Client() as client:
        created = api_call(
            Streams(client).create,
            name,
            source_value,
            input_topics=input_topic,
            output_topic=output_topic,
            bootstrap_servers=bootstrap,
            dlq_topic=dlq_topic,
            security=key_values(security, "--security"),
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            lag_target=lag_target,
            file=file,
            function=function,
        )
        slug = created["slug"]
        console.print(f"Stream endpoint [bold]{slug}[/bold] created.")
        if wait:
            with console.status(f"Waiting for {slug} to join its consumer group…"):
                api_call(client.endpoints.wait_until_running, slug)
            console.print(f"[green]{slug} is streaming[/green] from {', '.join(input_topic)}.")


def status_table(status: dict[str, Any]) -> Table:
    """The replicas of a stream status as a table."""
    table = Table(title=f"{status['slug']} v{status['version']}: {status['status']}")
    for column in ("replica", "version", "state", "partitions", "produced", "dead letters"):
        table.add_column(column)
    for replica in status["replicas"]:
        table.add_row(
            replica["id"][:8],
            replica["version"],
            replica["state"],
            _shown(replica.get("assigned_partitions")),
            _shown(replica.get("produced")),
            _shown(replica.get("dead_lettered")),
        )
    return table


def _shown(value: object) -> str:
    return "-" if value is None else str(value)


@stream_app.command("status")
def status(
    slug: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    watch: Annotated[float | None, typer.Option(help="Repeat every this many seconds.")] = None,
) -> None:
    """Consumer lag per partition and the replicas of a stream endpoint."""
    with Client() as client:
        while True:
            current = api_call(Streams(client).status, slug)
            if as_json:
                console.print_json(json.dumps(current))
            else:
                _print_status(current)
            if watch is None:
                return
            time.sleep(watch)  # --watch polls, like `watch`


def _print_status(current: dict[str, Any]) -> None:
    console.print(
        f"group {current['group']} on {current['bootstrap_servers']}: "
        f"{', '.join(current['input_topics'])} → {current['output_topic']} "
        f"(dead letters: {current['dlq_topic']})",
        markup=False,
    )
    console.print(
        f"lag {current['lag_total']} (target {current['lag_target']:g} per replica); replicas "
        f"{current['desired']} wanted, min {current['min']}, max {current['max']}"
        + (" — model swap in progress" if current["swapping"] else "")
    )
    for item in current["lag"]:
        console.print(f"  {item['topic']}[{item['partition']}]: {item['lag']}", markup=False)
    console.print(status_table(current))


@stream_app.command("swap")
def swap(
    slug: str,
    source: Annotated[
        str | None, typer.Option(help="Code of the new version (default: the same source).")
    ] = None,
    commit: Annotated[str | None, typer.Option(help="Commit, for a git source.")] = None,
    version: Annotated[
        int | None, typer.Option(help="Go back to this existing version instead.")
    ] = None,
) -> None:
    """Hand the stream to a new model version: no gap, no duplicate."""
    if source:
        source = source_arg(source)
    with Client() as client, console.status(f"Swapping the model of {slug}…"):
        result = api_call(Streams(client).swap, slug, source=source, commit=commit, version=version)
    console.print(
        f"[green]{slug}: version {result['previous_version']} → {result['version']}.[/green]"
    )
