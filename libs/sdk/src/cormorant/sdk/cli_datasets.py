"""``cormorant datasets create/list/versions/upload/download``; ``register(app)`` adds them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cormorant.sdk.client import Client, CormorantAPIError
from cormorant.sdk.datasets import Datasets

console = Console()
err = Console(stderr=True)
datasets_app = typer.Typer(help="Datasets: versioned files for batch jobs.", no_args_is_help=True)


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except CormorantAPIError as exc:
        err.print(f"[red]{exc.status_code} {exc.code}:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except (httpx.HTTPError, ValueError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@datasets_app.command("create")
def create(name: str) -> None:
    """Create an empty dataset."""
    with Client() as client:
        _call(Datasets(client).create, name)
    console.print(f"Dataset {name} created.", markup=False)


@datasets_app.command("list")
def list_datasets() -> None:
    """Every dataset with its latest version."""
    with Client() as client:
        found = _call(Datasets(client).list)
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
        found = _call(Datasets(client).versions, name)
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
        version = _call(Datasets(client).upload, name, file, path=path)
    console.print(f"{name}@{version['version']}/{path or file.name}", markup=False)


@datasets_app.command("download")
def download(reference: str, target: Path) -> None:
    """Download '<dataset>[@<n>]/<path>' to TARGET."""
    with Client() as client:
        written = _call(Datasets(client).download, reference, target)
    console.print(f"Wrote {written}.", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``cormorant datasets`` to ``app``."""
    app.add_typer(datasets_app, name="datasets")
