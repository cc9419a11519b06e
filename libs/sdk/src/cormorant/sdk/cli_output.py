"""What every ``cormorant`` command shares: the consoles, API errors as a red message and an
exit code, and ``KEY=VALUE`` options."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import typer
from rich.console import Console

from cormorant.sdk.client import CormorantAPIError

console = Console()
err = Console(stderr=True)
T = TypeVar("T")


def api_call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an SDK call, turning API errors into a red message and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except CormorantAPIError as exc:
        err.print(f"[red]{exc.status_code} {exc.code}:[/red] {exc.message}", soft_wrap=True)
        raise typer.Exit(1) from exc
    except (httpx.HTTPError, ValueError, TimeoutError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


def key_values(items: list[str] | None, option: str) -> dict[str, str] | None:
    """``KEY=VALUE`` items of a repeatable option as a dict (None when not given)."""
    if not items:
        return None
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            err.print(f"[red]{option} takes KEY=VALUE, got {item!r}[/red]")
            raise typer.Exit(2)
        pairs[key] = value
    return pairs


def source_arg(source: str) -> str:
    """A code source as the deployer takes it: a local directory made absolute (the deployer
    does not share the caller's working directory), a git URL unchanged."""
    if "://" in source or source.startswith("git@"):
        return source
    return str(Path(source).resolve())
