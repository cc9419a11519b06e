"""``cormorant batch SLUG in.csv out/predictions.csv --dataset NAME``, with a live progress bar.

``register(app)`` adds the command to the ``cormorant`` command.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cormorant.sdk.batch import start_job
from cormorant.sdk.cli_output import console, err
from cormorant.sdk.client import Client, CormorantAPIError


def batch(
    slug: Annotated[str, typer.Argument(help="The batch endpoint.")],
    input_file: Annotated[
        str, typer.Argument(help="A local CSV (uploaded first) or '<dataset>[@<n>]/<path>'.")
    ],
    output_file: Annotated[str, typer.Argument(help="Relative path of the output CSV.")],
    dataset: Annotated[str, typer.Option(help="Dataset the output CSV is synced into.")],
    log_predictions: Annotated[
        bool,
        typer.Option(
            "--log-predictions",
            help="Also record every row in the prediction log (logs, charts, CSV export).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final job as JSON.")] = False,
) -> None:
    """Predict every row of a CSV on a batch endpoint; the output becomes a dataset version."""
    try:
        with Client() as client:
            job = start_job(
                client, slug, input_file, output_file, dataset, log_predictions=log_predictions
            )
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=err,
                transient=as_json,
            ) as bar:
                task = bar.add_task(f"batch {job.id[:8]}", total=None, rate="")

                def show(view: dict[str, Any]) -> None:
                    rate = view.get("rows_per_s")
                    bar.update(
                        task,
                        total=view.get("rows_total"),
                        completed=view["rows_done"],
                        description=f"{view['status']}",
                        rate=f"{rate:,.0f} rows/s" if rate else "",
                    )

                final = job.wait(progress=show)
    except CormorantAPIError as exc:
        err.print(f"[red]{exc.status_code} {exc.code}:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except (httpx.HTTPError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if as_json:
        console.print_json(json.dumps(final))
    elif final["status"] == "succeeded":
        console.print(
            f"{final['rows_done']:,} rows ({final['failures']:,} failed) → "
            f"{final['output_reference']}",
            markup=False,
        )
    if final["status"] != "succeeded":
        err.print(f"[red]batch job {final['id']} {final['status']}:[/red] {final['error']}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``cormorant batch`` to ``app``."""
    app.command("batch")(batch)
