"""Command line of a replica: flags → ``WorkerSettings`` → gunicorn with uvicorn workers."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from cormorant.common.cliargs import describe_settings_error, key_value_pairs
from cormorant.common.errors import CormorantError
from cormorant.common.predictor import check_spec
from cormorant.common.sandbox import (
    ContainmentError,
    lower_limit,
    set_no_new_privs,
    set_undumpable,
)
from cormorant.common.telemetry import configure_logging
from cormorant.worker.app import create_app
from cormorant.worker.batching import InvalidBatching, batching_config
from cormorant.worker.server import GunicornServer, resolve_server_config
from cormorant.worker.settings import WorkerSettings

PROG = "python -m cormorant.worker"
log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag is optional over ``CORMORANT_WORKER_*`` settings."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve one model version: POST /predict, GET /healthz, GET /metrics.",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add("--source", help="directory of the model's code and artifacts")
    add("--file", help="file holding the predict function, e.g. predict.py")
    add("--function", help="name of the predict function (default: predict)")
    add("--preprocess-file", dest="preprocess_file", help="file of the preprocess function")
    add("--preprocess-function", dest="preprocess_function", help="preprocess function name")
    add("--accepts-file", dest="accepts_file", action="store_true",
        help="the input is a Base64 file, passed to predict as a temporary path")  # fmt: skip
    add("--endpoint", help="slug of the endpoint served (tags logged predictions and metrics)")
    add("--endpoint-id", dest="endpoint_id", help="database id of the endpoint (tags logs)")
    add("--version", help="model version served (tags logged predictions and metrics)")
    add("--host", help="interface to listen on (default: 127.0.0.1)")
    add("--port", type=int, help="port to listen on")
    add("--server", action="append", metavar="KEY=VALUE",
        help="gunicorn setting, e.g. workers=2, threads=4, timeout=600 (repeatable)")  # fmt: skip
    add("--env", action="append", metavar="KEY=VALUE",
        help="environment variable for the predict code, set before it is imported")  # fmt: skip
    add("--check", action="store_true",
        help="validate flags and server settings, exit 0 (or 2 with the reason)")  # fmt: skip
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> WorkerSettings:
    """Settings from ``CORMORANT_WORKER_*`` variables overridden by ``argv``'s flags."""
    parser = build_parser()
    given: dict[str, Any] = vars(parser.parse_args(argv))
    try:
        server = key_value_pairs(given.pop("server", []), "--server")
        env = key_value_pairs(given.pop("env", []), "--env")
    except ValueError as exc:
        parser.error(str(exc))
    base = WorkerSettings()
    settings = WorkerSettings(**given, server={**base.server, **server}, env={**base.env, **env})
    # Absolute before any chdir, so the model is found wherever the server runs.
    return settings.model_copy(update={"source": settings.source.resolve()})


def main(argv: Sequence[str] | None = None) -> int:
    """Start the replica and block until gunicorn stops; 2 for a refused configuration."""
    args = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in args
    if check_only:
        args.remove("--check")
    try:
        settings = parse_settings(args)
        server = resolve_server_config(
            settings.server,
            host=settings.host,
            port=settings.port,
            proc_name=f"cormorant-worker {settings.endpoint}/{settings.version}",
        )
        # The checks that need no import fail here, before any process is forked.
        check_spec(settings.predictor_spec())
        batching_config(settings.env)
    except CormorantError as exc:
        return _refuse(exc.message)
    except InvalidBatching as exc:
        return _refuse(str(exc))
    except ValidationError as exc:
        return _refuse(describe_settings_error(exc))
    if check_only:
        return 0
    try:
        _contain(settings)
    except ContainmentError as exc:
        return _refuse(str(exc))
    configure_logging(settings.log_level, json_lines=settings.log_json)
    # Exported in the master so every forked worker (and anything predict spawns) inherits it.
    os.environ.update(settings.env)
    # Model code opens its artifacts relative to its own directory, as it did when written.
    os.chdir(server.chdir or settings.source)
    options = {"loglevel": settings.log_level.lower(), **server.options}
    log.info(
        "serving %s:%s from %s with %d worker(s) x %d predict thread(s)",
        settings.file, settings.function, settings.source, server.workers, server.threads,
    )  # fmt: skip
    master = os.getpid()
    app = lambda: create_app(settings, threads=server.threads, replica_pid=master)  # noqa: E731
    GunicornServer(app, options, deaths_fd=settings.deaths_fd).run()
    return 0


def _contain(settings: WorkerSettings) -> None:
    """The replica's limits and ``no_new_privs``, before any user code is imported.

    Its uid is already its own: the deployer started it as that user (or the template's
    fork switched to it before calling ``main``).
    """
    for kind, value in (
        (resource.RLIMIT_DATA, settings.memory_mb and settings.memory_mb * 1024 * 1024),
        (resource.RLIMIT_NPROC, settings.max_processes),
        (resource.RLIMIT_NOFILE, settings.open_files),
    ):
        if value:
            lower_limit(kind, value)
    set_no_new_privs()
    set_undumpable()


def _refuse(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2
