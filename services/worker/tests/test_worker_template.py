"""The worker template's protocol, as the deployer speaks it over stdin/stdout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cormorant.common.ports import free_port


@pytest.fixture
def template() -> Iterator[subprocess.Popen[bytes]]:
    """A template with a little room for command lines and one module that does not exist."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cormorant.worker.template", "--preload", "json,not_a_module",
         "--title-room", " " * 300],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def exchange(process: subprocess.Popen[bytes], request: dict[str, Any] | None = None) -> Any:
    """Send ``request`` (if any) and read the next event line."""
    assert process.stdin is not None
    assert process.stdout is not None
    if request is not None:
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
    return json.loads(process.stdout.readline())


def test_template_forks_a_worker_that_reports_its_exit_code(
    template: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The template says what it preloaded and what it could not; a request forks a child that
    runs the worker's main with the given arguments and log, shows the given command line, and
    its exit code (2: a refused configuration) is reported; a command line that does not fit
    is refused; end of stdin ends the template."""
    ready = exchange(template)
    assert ready["event"] == "ready"
    assert "json" in ready["preloaded"]
    assert "cormorant.worker.cli" in ready["preloaded"]
    assert "not_a_module" in ready["missing"]
    assert ready["room"] > 300

    log = tmp_path / "replica.log"
    args = ["--source", str(tmp_path), "--server", "threads=many", "--port", "1"]
    title = [sys.executable, "-m", "cormorant.worker", *args]
    spawned = exchange(
        template,
        {"id": 1, "title": title, "args": args, "env": {"A": "1"}, "cwd": str(tmp_path),
         "log": str(log)},
    )  # fmt: skip
    assert spawned == {"event": "spawned", "id": 1, "pid": spawned["pid"]}
    exited = exchange(template)
    assert exited == {"event": "exited", "pid": spawned["pid"], "code": 2}
    assert "server setting 'threads'" in log.read_text()

    long_title = [*title, "x" * 1000]
    refused = exchange(
        template,
        {"id": 2, "title": long_title, "args": args, "env": {}, "cwd": str(tmp_path),
         "log": str(log)},
    )  # fmt: skip
    assert refused["event"] == "refused"
    assert refused["id"] == 2
    assert "command line needs" in refused["error"]
    assert psutil.Process(template.pid).cmdline()[:3] == [
        sys.executable,
        "-m",
        "cormorant.worker.template",
    ]

    assert template.stdin is not None
    template.stdin.close()
    assert template.wait(30) == 0


def test_a_fork_asked_to_dies_with_the_template_even_when_it_is_killed(tmp_path: Path) -> None:
    """A replica forked with ``parent_death_signal`` ends when the template is SIGKILLed (the
    deployer that owns it died); one forked without keeps serving, to be adopted."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x):\n    return x\n")
    template = subprocess.Popen(
        [sys.executable, "-m", "cormorant.worker.template", "--title-room", " " * 600],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    pids = []
    try:
        assert exchange(template)["event"] == "ready"
        for key, extra in ((1, {"parent_death_signal": 15}), (2, {})):
            args = ["--source", str(model), "--file", "predict.py", "--function", "predict",
                    "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
            request = {"id": key, "title": [sys.executable, "-m", "cormorant.worker", *args],
                       "args": args, "env": dict(os.environ), "cwd": str(model),
                       "log": str(tmp_path / f"{key}.log"), **extra}  # fmt: skip
            pids.append(exchange(template, request)["pid"])
        bound, free = (psutil.Process(pid) for pid in pids)
        template.kill()
        template.wait()
        bound.wait(timeout=30)  # raises TimeoutExpired if it outlived the template
        assert free.is_running()
        assert free.status() != psutil.STATUS_ZOMBIE
    finally:
        template.kill()
        template.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
