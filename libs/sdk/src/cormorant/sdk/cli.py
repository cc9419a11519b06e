"""The ``cormorant`` command line."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import psutil
import typer
from rich.table import Table

from cormorant.common.settings import CommonSettings
from cormorant.sdk import cli_batch, cli_datasets, cli_feedback, cli_rollout, cli_triggers
from cormorant.sdk.cli_k8s import k8s_app
from cormorant.sdk.cli_output import api_call, console, err, key_values, source_arg
from cormorant.sdk.cli_stream import stream_app
from cormorant.sdk.client import Client, CormorantAPIError, Endpoint, NotConfigured
from cormorant.sdk.stackfile import (
    PID_FILE,
    read_private_json,
    read_stack_file,
    read_supervisor_pid,
    stop_leftovers,
    write_private_json,
)

app = typer.Typer(help="Cormorant: serve Python predict functions.", no_args_is_help=True)


def _data_dir() -> Path:
    return CommonSettings().data_dir.absolute()


DEVSTACK_MODULE = "cormorant.devstack.stack"
"""The local stack's supervisor: in the private ``cormorant-devstack`` package, which brings the
server binaries (NATS, PostgreSQL, a Kafka broker) an SDK install has no use for."""


def _require_devstack() -> None:
    """Exit with how to install the local stack when ``cormorant-devstack`` is absent."""
    try:
        import cormorant.devstack  # noqa: F401
    except ModuleNotFoundError as exc:
        err.print(
            "[red]`cormorant up` needs the local dev stack (package cormorant-devstack), "
            "which is not installed.[/red] From a Cormorant checkout run `make install`, or "
            "`pip install -e libs/devstack`.",
            soft_wrap=True,
        )
        raise typer.Exit(1) from exc


def _health(url: str) -> str:
    try:
        status = httpx.get(url + "/healthz", timeout=2.0).status_code
    except httpx.HTTPError:
        return "down"
    return "ok" if status == 200 else f"HTTP {status}"


def _without_password(url: str | None) -> str | None:
    """A database or NATS URL fit for a terminal: the password masked (the stack file holds it)."""
    if not url:
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_stack(stack: dict[str, Any]) -> None:
    table = Table(title=f"Cormorant local stack: {stack.get('state', 'unknown')}")
    table.add_column("service")
    table.add_column("url")
    table.add_column("health")
    for name, info in stack.get("services", {}).items():
        table.add_row(name, info["url"], _health(info["url"]))
    console.print(table)
    console.print(f"NATS:       {_without_password(stack.get('nats_url'))}")
    console.print(f"PostgreSQL: {_without_password(stack.get('database_url'))}")
    console.print(f"Admin key:  {stack.get('admin_key')}")
    console.print(f"Stack file: {Path(stack.get('data_dir', '.')) / 'stack.json'}")


@app.command()
def up(
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run the supervisor in this terminal.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the stack.")] = 180.0,
    example: Annotated[
        bool, typer.Option(help="Deploy the sentiment example (once) and show how to call it.")
    ] = True,
) -> None:
    """Start NATS, PostgreSQL and every service; print their URLs."""
    data_dir = _data_dir()
    if read_supervisor_pid(data_dir) is not None:
        console.print("[yellow]The stack is already running.[/yellow]")
        stack = read_stack_file(data_dir)
        if stack:
            _print_stack(stack)
            if example:
                _ensure_example(data_dir, stack)
        return
    _require_devstack()
    _stop_leftovers(data_dir, "an earlier run had left running")
    if foreground:
        from cormorant.devstack.stack import main as supervise

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
            [sys.executable, "-m", DEVSTACK_MODULE],
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
    if example:
        _ensure_example(data_dir, stack)


EXAMPLE_SOURCE = Path("examples") / "sentiment"
EXAMPLE_INPUT = "what a wonderful little film"


def _ensure_example(data_dir: Path, stack: dict[str, Any]) -> None:
    """Deploy the sentiment example once; later runs reuse it. Print how to call it."""
    gateway = stack["services"]["gateway"]["url"]
    saved_path = data_dir / "example.json"
    saved = read_private_json(saved_path)
    try:
        with Client(url=gateway, api_key=stack["admin_key"]) as client:
            if saved is not None:
                try:
                    client.endpoints.get(saved["slug"])
                except CormorantAPIError as exc:
                    if exc.status_code != 404:
                        raise
                    saved = None
            if saved is None:
                if not EXAMPLE_SOURCE.is_dir():
                    return
                created = client.endpoints.create(
                    "sentiment", EXAMPLE_SOURCE.resolve(), server={"workers": "1"}
                )
                saved = {"slug": created["slug"], "token": created["token"]}
                write_private_json(saved_path, saved)
            with console.status(f"Waiting for the example endpoint {saved['slug']}…"):
                client.endpoints.wait_until_running(saved["slug"])
    except (CormorantAPIError, httpx.HTTPError, TimeoutError) as exc:
        err.print(f"[yellow]The stack is up, but the example endpoint is not: {exc}[/yellow]")
        return
    console.print(f"\nExample endpoint [bold]{saved['slug']}[/bold] (sentiment) is running.")
    _predict_lines(saved["slug"], saved["token"], gateway, EXAMPLE_INPUT)


@app.command()
def down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing.")] = 90.0,
) -> None:
    """Stop every process the stack started, replicas included, and wait until they exited."""
    data_dir = _data_dir()
    pid = read_supervisor_pid(data_dir)
    if pid is not None:
        try:
            supervisor = psutil.Process(pid)
            supervisor.terminate()
            with console.status("Stopping the stack…"):
                supervisor.wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            err.print("[yellow]The supervisor did not stop in time; killing it.[/yellow]")
            with contextlib.suppress(psutil.Error):
                supervisor.kill()
        (data_dir / PID_FILE).unlink(missing_ok=True)
    # A supervisor that was killed (or just now) leaves what it started to this sweep.
    left = _stop_leftovers(data_dir, "the stack had left running")
    if pid is None and not left:
        console.print("The stack is not running.")
        return
    console.print("[green]Stack stopped.[/green]")


_LEFTOVER_GRACE_S = 30.0


def _stop_leftovers(data_dir: Path, why: str) -> list[str]:
    """Stop the stack's processes still running without a supervisor, saying which."""
    with console.status("Stopping what is left of the stack…"):
        stopped = stop_leftovers(data_dir, grace_s=_LEFTOVER_GRACE_S)
    if stopped:
        err.print(f"[yellow]Stopped {len(stopped)} process(es) {why}:[/yellow]")
        for line in stopped:
            err.print(f"  {line}")
    return stopped


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


endpoints_app = typer.Typer(help="List, inspect, rerun and remove endpoints.", no_args_is_help=True)
keys_app = typer.Typer(help="Admin keys for the management API.", no_args_is_help=True)
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(keys_app, name="keys")
cli_rollout.register(app)
cli_batch.register(app)
cli_datasets.register(app)
cli_feedback.register(app)
cli_triggers.register(app)
app.add_typer(stream_app, name="stream")
app.add_typer(k8s_app, name="k8s")


def _endpoint_table(endpoints: list[dict[str, Any]]) -> Table:
    table = Table()
    for column in ("slug", "kind", "status", "version", "replicas", "created"):
        table.add_column(column)
    for ep in endpoints:
        replicas = ep.get("replicas", {})
        table.add_row(
            ep["slug"],
            ep.get("kind", ""),
            ep.get("status", "") + (f" ({ep['reason']})" if ep.get("reason") else ""),
            str(ep.get("version", "")),
            f"{replicas.get('ready', 0)}/{replicas.get('desired', 0)}"
            f" (min {replicas.get('min')}, max {replicas.get('max')})",
            str(ep.get("created_at", ""))[:19],
        )
    return table


def _predict_lines(slug: str, token: str, url: str, example: str) -> None:
    console.print("\nTry it:")
    console.print(
        f"  curl -s {url}/api/v1/endpoints/{slug}/predict "
        f"-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
        f"-d '{{\"input_params\": {json.dumps(example)}}}'",
        soft_wrap=True,
        markup=False,
    )
    console.print(
        f"  .venv/bin/cormorant predict {slug} '{json.dumps(example)}' --token {token}",
        soft_wrap=True,
        markup=False,
    )


@app.command()
def deploy(
    source: Annotated[str, typer.Argument(help="Directory (or git URL) of the model's code.")],
    name: Annotated[str, typer.Option(help="Endpoint name; its slug derives from it.")],
    file: Annotated[str, typer.Option(help="File holding the predict function.")] = "predict.py",
    function: Annotated[str, typer.Option(help="Name of the predict function.")] = "predict",
    kind: Annotated[str, typer.Option(help="web, batch or stream.")] = "web",
    commit: Annotated[str | None, typer.Option(help="Commit, for a git source.")] = None,
    preprocess_file: Annotated[str | None, typer.Option(help="File of preprocess.")] = None,
    preprocess_function: Annotated[str | None, typer.Option(help="Preprocess name.")] = None,
    accepts_file: Annotated[
        bool, typer.Option("--accepts-file", help="Input is a Base64 file, passed as a path.")
    ] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE for predict code (repeat).")
    ] = None,
    server: Annotated[
        list[str] | None, typer.Option("--server", help="gunicorn KEY=VALUE (repeat).")
    ] = None,
    min_replicas: Annotated[int | None, typer.Option("--min", help="Fewest replicas.")] = None,
    max_replicas: Annotated[int | None, typer.Option("--max", help="Most replicas.")] = None,
    target: Annotated[
        float | None, typer.Option(help="In-flight requests per replica to scale on.")
    ] = None,
    timeout_s: Annotated[
        float | None,
        typer.Option("--timeout", help="Per-request deadline (s); past it: 504, worker replaced."),
    ] = None,
    memory_mb: Annotated[int | None, _MEMORY_MB] = None,
    max_processes: Annotated[int | None, _MAX_PROCESSES] = None,
    open_files: Annotated[int | None, _OPEN_FILES] = None,
    wait: Annotated[bool, typer.Option(help="Wait until the endpoint serves.")] = True,
) -> None:
    """Deploy a predict function as an endpoint and print its token."""
    replicas = _drop_none_dict({"min": min_replicas, "max": max_replicas, "target": target})
    resources = _resources(memory_mb, max_processes, open_files)
    source_value = source_arg(source)
    with Client() as client:
        created = api_call(
            client.endpoints.create,
            name,
            source_value,
            kind=kind,
            commit=commit,
            file=file,
            function=function,
            preprocess_file=preprocess_file,
            preprocess_function=preprocess_function,
            accepts_file=accepts_file or None,
            env=key_values(env, "--env"),
            server=key_values(server, "--server"),
            replicas=replicas or None,
            timeout_s=timeout_s,
            resources=resources,
        )
        slug = created["slug"]
        console.print(f"Endpoint [bold]{slug}[/bold] created; its token (shown once):")
        console.print(created["token"], markup=False)
        if wait:
            with console.status(f"Waiting for {slug} to serve…"):
                endpoint = api_call(client.endpoints.wait_until_running, slug)
            console.print(f"[green]{slug} is {endpoint['status']}.[/green]")
            if kind == "batch":
                # Its predict URL answers 409: a batch endpoint serves jobs, not requests.
                console.print("\nRun a job (it scales from 0 and back):")
                console.print(
                    f"  .venv/bin/cormorant batch {slug} input.csv out/predictions.csv "
                    "--dataset NAME",
                    soft_wrap=True,
                    markup=False,
                )
            else:
                _predict_lines(slug, created["token"], client.url, "your input")


def _drop_none_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


_MEMORY_MB = typer.Option(
    "--memory-mb", help="Memory (MB) each worker process may map; past it, MemoryError."
)
_MAX_PROCESSES = typer.Option(
    "--max-processes", help="Processes and threads a replica may run at once."
)
_OPEN_FILES = typer.Option("--open-files", help="File descriptors each process may hold.")


def _resources(
    memory_mb: int | None, max_processes: int | None, open_files: int | None
) -> dict[str, int] | None:
    """The ``resources`` field from the limit options given, None if none was."""
    given = {"memory_mb": memory_mb, "max_processes": max_processes, "open_files": open_files}
    return _drop_none_dict(given) or None


@endpoints_app.command("list")
def endpoints_list() -> None:
    """Every endpoint with its status and replicas."""
    with Client() as client:
        console.print(_endpoint_table(api_call(client.endpoints.list)))


@endpoints_app.command("show")
def endpoints_show(slug: str) -> None:
    """One endpoint in full, as JSON (with its shadow traffic, if any)."""
    with Client() as client:
        endpoint = api_call(client.endpoints.get, slug)
        if endpoint.get("kind", "web") == "web":
            mirrored = api_call(client.rollouts.get_shadow, slug)
            shadow = {k: mirrored[k] for k in ("version", "percent")}
            endpoint["shadow"] = shadow if mirrored.get("version") is not None else None
        console.print_json(json.dumps(endpoint))


endpoints_app.command("shadow")(cli_rollout.shadow)


@endpoints_app.command("rm")
def endpoints_rm(slug: str) -> None:
    """Stop and remove an endpoint."""
    with Client() as client:
        api_call(client.endpoints.delete, slug)
    console.print(f"Endpoint {slug} removed.")


@endpoints_app.command("rerun")
def endpoints_rerun(
    slug: str,
    name: Annotated[str | None, typer.Option(help="Name of the new endpoint.")] = None,
    memory_mb: Annotated[int | None, _MEMORY_MB] = None,
    max_processes: Annotated[int | None, _MAX_PROCESSES] = None,
    open_files: Annotated[int | None, _OPEN_FILES] = None,
) -> None:
    """A new endpoint with the same settings (and exactly the same code)."""
    resources = _resources(memory_mb, max_processes, open_files)
    with Client() as client:
        created = api_call(client.endpoints.rerun, slug, name=name, resources=resources)
    console.print(f"Endpoint [bold]{created['slug']}[/bold] created; its token (shown once):")
    console.print(created["token"], markup=False)


@app.command()
def predict(
    slug: str,
    input_json: Annotated[str, typer.Argument(help="The input, as JSON (a list is spread).")],
    token: Annotated[
        str | None, typer.Option(envvar="CORMORANT_TOKEN", help="The endpoint's token.")
    ] = None,
) -> None:
    """Send one prediction request and print the answer."""
    try:
        value = json.loads(input_json)
    except json.JSONDecodeError as exc:
        err.print(f"[red]INPUT_JSON is not JSON ({exc}); quote strings: '\"hello\"'[/red]")
        raise typer.Exit(2) from exc
    endpoint = Endpoint(slug, token=token)
    console.print_json(json.dumps(api_call(endpoint.predict, value)))


@app.command()
def logs(
    slug: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new ones.")] = False,
    limit: Annotated[int, typer.Option(help="How many of the newest to show.")] = 20,
    status: Annotated[int | None, typer.Option(help="Only this HTTP status.")] = None,
    version: Annotated[str | None, typer.Option(help="Only this model version.")] = None,
    q: Annotated[str | None, typer.Option(help="Text in input, output or error.")] = None,
    shadow: Annotated[
        bool | None,
        typer.Option(
            "--shadow/--live", help="Only shadow answers to mirrored requests, or only live ones."
        ),
    ] = None,
) -> None:
    """Show logged predictions, newest last; --follow keeps printing new ones."""
    endpoint = Endpoint(slug)
    mirrored = None if shadow is None else str(shadow).lower()
    filters = {"status": status, "version": version, "q": q, "shadow": mirrored}
    shown: set[str] = set()
    items = api_call(endpoint.logs, limit=limit, **filters)
    while True:
        for item in reversed(items):
            if item["request_id"] in shown:
                continue
            shown.add(item["request_id"])
            outcome = item.get("error") or json.dumps(item.get("output"))
            tag = " shadow" if item.get("shadow") else ""
            console.print(
                f"{str(item['received_at'])[:23]} v{item['version']}{tag} {item['status']} "
                f"{item['latency_ms']:.1f}ms {json.dumps(item['input'])[:80]} -> {outcome[:80]}",
                markup=False,
                soft_wrap=True,
            )
        if not follow:
            return
        time.sleep(1.0)  # --follow polls the log once a second, like `tail -f`
        newest = items[0]["received_at"] if items else None
        items = api_call(endpoint.logs, limit=1000, since=newest, **filters)


@app.command()
def export(
    slug: str,
    path: Annotated[Path, typer.Argument(help="CSV file to write.")],
) -> None:
    """Export every logged prediction of an endpoint to a CSV file."""
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TransferSpeedColumn

    with Progress(SpinnerColumn(), DownloadColumn(), TransferSpeedColumn(), console=console) as bar:
        task = bar.add_task(f"Exporting {slug}", total=None)
        size = api_call(
            Endpoint(slug).export_csv, path, progress=lambda n: bar.update(task, completed=n)
        )
    console.print(f"Wrote {size:,} bytes to {path}.")


@keys_app.command("create")
def keys_create(name: str) -> None:
    """Create an admin key and print it (shown only this once)."""
    with Client() as client:
        created = api_call(client.keys.create, name)
    console.print(created["key"], markup=False)


def main() -> None:
    """Entry point of the ``cormorant`` command."""
    try:
        app()
    except NotConfigured as exc:
        # Any command run before `make up` (or without CORMORANT_URL): say so, no traceback.
        err.print(f"[red]{exc}[/red]")
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
