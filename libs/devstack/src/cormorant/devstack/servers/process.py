"""A child server process with readiness detection from its log and a bounded stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Self

from cormorant.common.lifetime import parent_death_hook


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


class ManagedProcess:
    """Starts a command, waits for a line in its log that says it is ready, stops it."""

    def __init__(
        self,
        name: str,
        log_path: Path,
        *,
        ready_line: str | None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.ready_line = ready_line
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._offset = 0
        self.parent_death_signal: signal.Signals | None = None
        """Set to have the kernel send it this signal when its starter dies (``lifetime``)."""

    @property
    def pid(self) -> int | None:
        """PID of the running process, if any."""
        return self.proc.pid if self.proc is not None else None

    def command(self) -> Sequence[str]:
        """The argv that starts the server."""
        raise NotImplementedError

    def popen_kwargs(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (user, env)."""
        return {}

    def is_ready(self) -> bool:
        """An extra readiness probe run after the ready line appeared."""
        return True

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and block until it is ready or fails."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the process without waiting for it (pair with ``wait_ready``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            list(self.command()),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # A session of its own: Ctrl-C in a terminal reaches the supervisor, not the servers.
            start_new_session=True,
            preexec_fn=(
                parent_death_hook(self.parent_death_signal) if self.parent_death_signal else None
            ),
            **self.popen_kwargs(),
        )

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self) -> None:
        """Block until the ready line appeared and ``is_ready`` holds; raise if it died."""
        offset = self._offset
        deadline = time.monotonic() + self.ready_timeout
        seen_line = self.ready_line is None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
                )
            if not seen_line:
                with open(self.log_path, "rb") as fh:
                    fh.seek(offset)
                    seen_line = self.ready_line is not None and (
                        self.ready_line.encode() in fh.read()
                    )
            if seen_line and self.is_ready():
                return
            time.sleep(0.02)  # polling a log file: a readiness wait, not a fixed delay
        self.kill()
        raise ServerStartError(
            f"{self.name} not ready after {self.ready_timeout:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # The signal that asks the server for a graceful, prompt shutdown.
    stop_signal: signal.Signals = signal.SIGTERM

    def stop(self, timeout: float = 10.0) -> None:
        """Ask for a graceful stop, then SIGKILL once ``timeout`` has passed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def kill(self) -> None:
        """SIGKILL the process (and its process group), as a crash would."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
