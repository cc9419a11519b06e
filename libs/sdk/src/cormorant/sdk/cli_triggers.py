"""``cormorant triggers create/list/show/enable/disable/rm/firings``; ``register(app)`` adds
them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from cormorant.sdk.cli_output import api_call, console, err, key_values
from cormorant.sdk.client import Client

triggers_app = typer.Typer(
    help="Triggers: e-mail, a webhook or a flow when a logged metric crosses a threshold.",
    no_args_is_help=True,
)


def _condition(trigger: dict[str, Any]) -> str:
    sign = ">" if trigger["comparison"] == "gt" else "<"
    return f"{trigger['tag']} {sign} {trigger['value']:g}"


def _action(action: dict[str, Any]) -> str:
    if "email" in action:
        return "email " + ", ".join(action["email"])
    if "webhook" in action:
        return f"webhook {action['webhook']}"
    return f"flow {action['flow']}"


def _print(result: Any, as_json: bool) -> bool:
    if as_json:
        console.print_json(json.dumps(result))
    return as_json


def _show(trigger: dict[str, Any]) -> None:
    state = trigger.get("state") or {}
    last = state.get("last_evaluation") or {}
    rows = [
        ("id", trigger["id"]),
        ("title", trigger["title"]),
        ("endpoint", trigger["endpoint"]),
        ("condition", _condition(trigger)),
        ("every", trigger["every"]),
        ("min events", str(trigger["min_events"])),
        ("cool-down", f"{trigger['cooldown_seconds']}s"),
        ("severity", trigger["severity"]),
        ("action", _action(trigger["action"])),
        ("enabled", "yes" if trigger["enabled"] else "no"),
        ("streak", str(state.get("streak", "-"))),
        ("last evaluation", f"{last.get('at', '-')} {last.get('outcome', '')}".strip()),
        ("last fired", trigger.get("last_fired_at") or "-"),
    ]
    for key, value in rows:
        console.print(f"{key:<16}{value}", markup=False, soft_wrap=True)


@triggers_app.command("create")
def create(
    slug: Annotated[str, typer.Argument(help="The endpoint whose metric is watched.")],
    tag: Annotated[str, typer.Option(help="The metric key logged with log_metric, exactly.")],
    gt: Annotated[float | None, typer.Option("--gt", help="Fire on values above this.")] = None,
    lt: Annotated[float | None, typer.Option("--lt", help="Fire on values below this.")] = None,
    every: Annotated[str, typer.Option(help="How often to evaluate: 30s, 5m, 1h.")] = "1m",
    min_events: Annotated[
        int, typer.Option("--min-events", help="Values meeting the condition to fire.")
    ] = 1,
    email: Annotated[
        list[str] | None, typer.Option("--email", help="Send an e-mail to (repeatable).")
    ] = None,
    webhook: Annotated[str | None, typer.Option(help="POST the firing to this URL.")] = None,
    secret: Annotated[
        str | None, typer.Option(help="The webhook's signing secret (default: generated).")
    ] = None,
    flow: Annotated[str | None, typer.Option(help="Run this stored flow.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="KEY=VALUE for the flow run.")
    ] = None,
    severity: Annotated[str, typer.Option(help="info, warning or critical.")] = "warning",
    title: Annotated[str | None, typer.Option(help="Default: the condition.")] = None,
    cooldown: Annotated[
        str | None, typer.Option(help="Wait after a firing (default every × min-events).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """Watch SLUG's metric TAG; fire the action when --min-events values cross the threshold."""
    if (gt is None) == (lt is None):
        err.print("[red]give one of --gt or --lt[/red]")
        raise typer.Exit(2)
    actions = [a for a in (email, webhook, flow) if a]
    if len(actions) != 1:
        err.print("[red]give one action: --email, --webhook or --flow[/red]")
        raise typer.Exit(2)
    action: dict[str, Any]
    if email:
        action = {"email": email}
    elif webhook:
        action = {"webhook": webhook, **({"secret": secret} if secret else {})}
    else:
        action = {"flow": flow, "params": key_values(param, "--param") or {}}
    comparison, value = ("gt", gt) if gt is not None else ("lt", lt)
    assert value is not None
    with Client() as client:
        created = api_call(
            client.triggers.create,
            slug,
            tag=tag,
            comparison=comparison,
            value=value,
            every=every,
            min_events=min_events,
            action=action,
            title=title,
            severity=severity,
            cooldown=cooldown,
        )
    for warning in created.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
    if _print(created, as_json):
        return
    console.print(f"Trigger {created['id']} created.", markup=False)
    if created.get("secret"):
        console.print(
            f"Webhook secret (shown once): {created['secret']}", markup=False, soft_wrap=True
        )
    _show(created)


@triggers_app.command("list")
def list_triggers(
    slug: Annotated[str | None, typer.Argument(help="Only this endpoint's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """Every trigger, or SLUG's, with its state."""
    with Client() as client:
        found = api_call(client.triggers.list, slug)
    if _print(found, as_json):
        return
    table = Table()
    for column in ("id", "endpoint", "title", "condition", "every", "action", "on", "fired"):
        table.add_column(column)
    for t in found:
        table.add_row(
            t["id"],
            t["endpoint"],
            t["title"],
            _condition(t),
            t["every"],
            _action(t["action"]),
            "yes" if t["enabled"] else "no",
            t.get("last_fired_at") or "-",
        )
    console.print(table)


@triggers_app.command("show")
def show(
    trigger_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """One trigger, its state and last evaluation."""
    with Client() as client:
        found = api_call(client.triggers.get, trigger_id)
    if not _print(found, as_json):
        _show(found)


@triggers_app.command("enable")
def enable(trigger_id: str) -> None:
    """Evaluate the trigger again, counting values logged from now on."""
    with Client() as client:
        api_call(client.triggers.enable, trigger_id)
    console.print(f"Trigger {trigger_id} enabled.", markup=False)


@triggers_app.command("disable")
def disable(trigger_id: str) -> None:
    """Stop evaluating the trigger; its settings and firings are kept."""
    with Client() as client:
        api_call(client.triggers.disable, trigger_id)
    console.print(f"Trigger {trigger_id} disabled.", markup=False)


@triggers_app.command("rm")
def remove(trigger_id: str) -> None:
    """Remove the trigger and its firings."""
    with Client() as client:
        api_call(client.triggers.delete, trigger_id)
    console.print(f"Trigger {trigger_id} removed.", markup=False)


triggers_app.command("delete", help="The same as rm.")(remove)


@triggers_app.command("firings")
def firings(
    trigger_id: str,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print them as JSON.")] = False,
) -> None:
    """The trigger's firings, newest first, with their delivery status."""
    with Client() as client:
        found = api_call(client.triggers.firings, trigger_id, limit)
    if _print(found, as_json):
        return
    table = Table()
    for column in ("fired", "status", "attempts", "values", "error"):
        table.add_column(column)
    for f in found:
        values = ", ".join(f"{v:g}" for v in f["values"])
        table.add_row(f["fired_at"], f["status"], str(f["attempts"]), values, f["error"] or "")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``cormorant triggers`` to the ``cormorant`` command."""
    app.add_typer(triggers_app, name="triggers")
