"""Gunicorn with uvicorn workers, configured from the replica's key-value server settings."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.config import Config
from starlette.types import ASGIApp

from cormorant.common.errors import BadRequest
from cormorant.worker.deaths import ReplicaArbiter, child_exit, close_deaths_fd

# uvicorn.workers is deprecated in favour of the uvicorn-worker package, same class.
WORKER_CLASS = "uvicorn_worker.UvicornWorker"

# Models can take minutes to answer; gunicorn's 30 s default would kill healthy workers.
DEFAULT_TIMEOUT = 1800

# Settings the replica owns, each with the reason a user cannot set it.
_OWNED: Mapping[str, str] = {
    "bind": "the --port and --host flags own the listening address",
    "worker_class": "a replica always runs uvicorn workers",
    "wsgi_app": "a replica serves its own app",
    "paste": "a replica serves its own app",
    "raw_paste_global_conf": "a replica serves its own app",
    "config": "a replica reads no gunicorn config file; pass each setting as --server KEY=VALUE",
    "raw_env": "use --env KEY=VALUE to give predict code environment variables",
    "preload_app": "the model is imported in each worker process, never in the master",
    "daemon": "a replica stays in the foreground so its supervisor can watch it",
    "user": "a replica runs as the uid its deployer gives it",
    "group": "a replica runs as the gid its deployer gives it",
    "initgroups": "a replica runs with no supplementary group",
    "check_config": "it is a command-line-only flag of the gunicorn program",
    "print_config": "it is a command-line-only flag of the gunicorn program",
    "reload": "it is a development flag of the gunicorn program; redeploy the version instead",
    "reload_engine": "it is a development flag of the gunicorn program",
    "reload_extra_files": "it is a development flag of the gunicorn program",
}


class InvalidServerSetting(BadRequest):
    """A ``--server KEY=VALUE`` setting that is unknown, owned by the replica, or invalid."""

    code = "invalid_server_setting"

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"server setting {key!r}: {reason}", details={"setting": key})
        self.key = key


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Validated gunicorn settings and the values the app itself needs from them."""

    options: dict[str, Any] = field(default_factory=dict)
    """Settings handed to gunicorn, as given (gunicorn parses them again)."""

    workers: int = 1
    """Worker processes, each importing the model once."""

    threads: int = 1
    """Threads per worker process that run predict."""

    timeout: int = DEFAULT_TIMEOUT
    """Seconds a silent worker lives before gunicorn restarts it."""

    chdir: str | None = None
    """Working directory requested with ``--server chdir=...``, if any."""


def default_workers() -> int:
    """One worker process per CPU this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_server_config(
    settings: Mapping[str, str], *, host: str, port: int, proc_name: str | None = None
) -> ServerConfig:
    """Check ``settings`` with gunicorn's own parsers and add the replica's defaults."""
    cfg = Config()
    given: dict[str, Any] = {}
    for raw_key, value in settings.items():
        key = raw_key.strip().lower().replace("-", "_")
        _check_settable(cfg, raw_key, key)
        try:
            cfg.set(key, value)
        except (ValueError, TypeError) as exc:
            raise InvalidServerSetting(raw_key, f"invalid value {value!r}: {exc}") from exc
        given[key] = value
    options: dict[str, Any] = {
        "workers": default_workers(),
        "timeout": DEFAULT_TIMEOUT,
        # Many replicas share one machine; gunicorn's one default control socket would clash.
        "control_socket_disable": True,
    }
    if proc_name:
        options["proc_name"] = proc_name
    options.update(given)
    for key in ("workers", "timeout"):
        cfg.set(key, options[key])
    bind_host = f"[{host}]" if ":" in host else host
    options["bind"] = [f"{bind_host}:{port}"]
    options["worker_class"] = WORKER_CLASS
    chdir = str(given["chdir"]) if "chdir" in given else None
    return ServerConfig(
        options=options,
        workers=int(cfg.workers),
        threads=int(cfg.threads),
        timeout=int(cfg.timeout),
        chdir=chdir,
    )


def _check_settable(cfg: Any, raw_key: str, key: str) -> None:
    if key in _OWNED:
        raise InvalidServerSetting(raw_key, f"cannot be set: {_OWNED[key]}")
    setting = cfg.settings.get(key)
    if setting is None:
        close = difflib.get_close_matches(key, list(cfg.settings), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InvalidServerSetting(raw_key, f"unknown gunicorn setting{hint}")
    if setting.cli is None:
        raise InvalidServerSetting(
            raw_key, "cannot be set as KEY=VALUE: it takes a Python object (a hook or a dict)"
        )


class GunicornServer(BaseApplication):  # type: ignore[misc]
    """Gunicorn run in-process; ``load`` builds the ASGI app in each forked worker."""

    def __init__(
        self,
        app_factory: Callable[[], ASGIApp],
        options: Mapping[str, Any],
        *,
        deaths_fd: int | None = None,
    ) -> None:
        self._app_factory = app_factory
        self._options = dict(options)
        self._deaths_fd = deaths_fd
        # Hooks are ours alone: a user cannot set them (``_check_settable``).
        self._options["child_exit"] = child_exit
        # Gunicorn's defaults are the uid and gid of the process that imported it: a replica
        # forked from the template, which imported it as root, has switched since.
        self._options["user"] = os.geteuid()
        self._options["group"] = os.getegid()
        self._options["post_fork"] = lambda _server, _worker: close_deaths_fd(deaths_fd)
        super().__init__()

    def run(self) -> None:
        """Run the master until it stops, reporting worker deaths to ``deaths_fd``."""
        try:
            ReplicaArbiter(self, self._deaths_fd).run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load_config(self) -> None:
        """Hand the validated options to gunicorn's configuration."""
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> ASGIApp:
        """Build the app: called after the fork, so each worker imports the model itself."""
        return self._app_factory()
