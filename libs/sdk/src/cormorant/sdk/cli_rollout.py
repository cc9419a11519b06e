"""CLI commands of model updates: ``versions create/list``, ``rollout``, ``promote``,
``rollback``, ``traffic``. ``register(app)`` adds them to the ``cormorant`` command."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console, err, key_values, source_arg
from cormorant.sdk.client import Client

versions_app = typer.Typer(help="Versions of an endpoint.", no_args_is_help=True)


def _versions_table(versions: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("version", "role", "weight", "status", "replicas", "source"):
        table.add_column(column)
    for v in versions:
        states = [r["state"] for r in v.get("replicas", [])]
        summary = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "none"
        status = v["status"] + (f" ({v['reason']})" if v.get("reason") else "")
        table.add_row(
            v["version"], v["role"], f"{v['weight']}%", status, summary, v.get("source", "")
        )
    return table


def _show_traffic(traffic: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(traffic))
        return
    weights = ", ".join(f"v{k}: {w}%" for k, w in traffic["weights"].items())
    console.print(f"{traffic['slug']}: generation {traffic['generation']}, {weights}")
    console.print(_versions_table(traffic["versions"]))


@versions_app.command("create")
def versions_create(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    source: Annotated[str, typer.Argument(help="Directory (or git URL) of the new code.")],
    file: Annotated[str | None, typer.Option(help="File holding the predict function.")] = None,
    function: Annotated[str | None, typer.Option(help="Name of the predict function.")] = None,
    commit: Annotated[str | None, typer.Option(help="Commit, for a git source.")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE for predict code (repeat).")
    ] = None,
) -> None:
    """Create a version of SLUG from SOURCE: its replicas start, it takes no traffic yet."""
    pairs = key_values(env, "--env")
    with Client() as client:
        created = api_call(
            client.rollouts.create_version,
            slug,
            source_arg(source),
            file=file,
            function=function,
            commit=commit,
            env=pairs,
        )
    console.print(f"Created version {created['version']} of {slug}; its replicas are starting.")
    console.print(f"Send it traffic: cormorant rollout {slug} {created['version']} --percent 10")


@versions_app.command("list")
def versions_list(slug: Annotated[str, typer.Argument(help="The endpoint.")]) -> None:
    """List the versions of SLUG with their role, weight and replicas."""
    with Client() as client:
        versions = api_call(client.rollouts.versions, slug)
    console.print(_versions_table(versions))


def rollout(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    version: Annotated[str, typer.Argument(help="The version to send traffic to.")],
    percent: Annotated[int, typer.Option(help="Share of the requests, 1-100.")] = 10,
    policy: Annotated[
        str | None,
        typer.Option(help='Progressive policy as JSON, e.g. {"steps": [10, 50, 100]}.'),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the traffic as JSON.")] = False,
) -> None:
    """Give VERSION of SLUG a share of the traffic once its replicas are ready."""
    parsed = None
    if policy is not None:
        try:
            parsed = json.loads(policy)
        except ValueError as exc:
            err.print(f"[red]--policy is not JSON: {exc}[/red]")
            raise typer.Exit(2) from exc
    with Client() as client:
        traffic = api_call(client.rollouts.rollout, slug, version, percent, policy=parsed)
    _show_traffic(traffic, as_json)


def promote(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the traffic as JSON.")] = False,
) -> None:
    """Send all of SLUG's traffic to its canary; the old version retires after draining."""
    with Client() as client:
        _show_traffic(api_call(client.rollouts.promote, slug), as_json)


def rollback(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the traffic as JSON.")] = False,
) -> None:
    """Send all of SLUG's traffic back to its stable version; the canary retires."""
    with Client() as client:
        _show_traffic(api_call(client.rollouts.rollback, slug), as_json)


def traffic(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the traffic as JSON.")] = False,
) -> None:
    """Show SLUG's weights, generation and each version's replicas."""
    with Client() as client:
        _show_traffic(api_call(client.rollouts.traffic, slug), as_json)


def shadow(
    slug: Annotated[str, typer.Argument(help="The endpoint.")],
    version: Annotated[
        str | None, typer.Option(help="The version to mirror to (running, without traffic).")
    ] = None,
    percent: Annotated[
        float, typer.Option(help="Share of live requests mirrored, more than 0 up to 100.")
    ] = 100.0,
    stop: Annotated[bool, typer.Option("--stop", help="Stop mirroring.")] = False,
) -> None:
    """Mirror a share of SLUG's live requests to VERSION (answers logged tagged shadow, never
    returned), stop it with --stop, or show it with neither."""
    if stop and version is not None:
        err.print("[red]--stop takes no --version[/red]")
        raise typer.Exit(2)
    with Client() as client:
        if stop:
            state = api_call(client.rollouts.stop_shadow, slug)
        elif version is not None:
            state = api_call(client.rollouts.shadow, slug, version, percent)
        else:
            state = api_call(client.rollouts.get_shadow, slug)
    if state.get("version") is None:
        console.print(f"{slug}: no shadow traffic")
    else:
        console.print(
            f"{slug}: {state['percent']:g}% of live requests mirrored to version "
            f"{state['version']} (generation {state['generation']})"
        )


def register(app: typer.Typer) -> None:
    """Add the model-update commands to the ``cormorant`` command."""
    app.add_typer(versions_app, name="versions")
    for command in (rollout, promote, rollback, traffic):
        app.command()(command)
    # Flows deploy through rollouts; their commands come with these.
    from cormorant.sdk import cli_flows

    cli_flows.register(app)
