"""``cormorant datasets create/list/versions/upload/download``; ``register(app)`` adds them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console
from cormorant.sdk.client import Client
from cormorant.sdk.datasets import Datasets

datasets_app = typer.Typer(help="Datasets: versioned files for batch jobs.", no_args_is_help=True)


@datasets_app.command("create")
def create(name: str) -> None:
    """Create an empty dataset."""
    with Client() as client:
        api_call(Datasets(client).create, name)
    console.print(f"Dataset {name} created.", markup=False)


@datasets_app.command("list")
def list_datasets() -> None:
    """Every dataset with its latest version."""
    with Client() as client:
        found = api_call(Datasets(client).list)
    table = Table()
    for column in ("name", "latest version", "created"):
        table.add_column(column)
    for dataset in found:
        latest = dataset["latest_version"]
        table.add_row(
            dataset["name"], "-" if latest is None else str(latest), dataset["created_at"]
        )
    console.print(table)


@datasets_app.command("versions")
def versions(name: str) -> None:
    """Every version of a dataset with its files, oldest first."""
    with Client() as client:
        found = api_call(Datasets(client).versions, name)
    table = Table()
    for column in ("version", "created", "files"):
        table.add_column(column)
    for version in found:
        files = ", ".join(f"{f['path']} ({f['size']:,} B)" for f in version["files"])
        table.add_row(str(version["version"]), version["created_at"], files)
    console.print(table)


@datasets_app.command("upload")
def upload(
    name: str,
    file: Path,
    path: Annotated[
        str | None, typer.Option(help="Path in the dataset (default: file name).")
    ] = None,
) -> None:
    """Upload a file as a new version of the dataset."""
    with Client() as client:
        version = api_call(Datasets(client).upload, name, file, path=path)
    console.print(f"{name}@{version['version']}/{path or file.name}", markup=False)


@datasets_app.command("download")
def download(reference: str, target: Path) -> None:
    """Download '<dataset>[@<n>]/<path>' to TARGET."""
    with Client() as client:
        written = api_call(Datasets(client).download, reference, target)
    console.print(f"Wrote {written}.", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``cormorant datasets`` to ``app``."""
    app.add_typer(datasets_app, name="datasets")
