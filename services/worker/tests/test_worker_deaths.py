"""A worker process that dies is replaced, and its master reports why on ``deaths_fd``.

One real replica (gunicorn master, one worker) with a deadline and a memory limit: a predict
stuck in a loop gets 504 and its worker is replaced, ``os._exit`` and a ``MemoryError`` end
theirs, and each death is one JSON line with its cause on the descriptor the master was given.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
SRC = [ROOT / "libs/common/src", ROOT / "libs/sdk/src", ROOT / "services/worker/src"]
# A bound on readiness on a loaded machine, not a timing claim.
START_TIMEOUT = 120.0

MODEL = """\
import os


def predict(action):
    if action == "loop":
        while True:
            pass
    if action == "exit":
        os._exit(1)
    if action == "allocate":
        return len(bytearray(1024 * 1024 * 1024))
    return action
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(deaths_fd: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in SRC] + [env.get("PYTHONPATH", "")])
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    env["CORMORANT_LOG_JSON"] = "false"
    env["CORMORANT_WORKER_REQUEST_TIMEOUT_S"] = "1"
    env["CORMORANT_WORKER_MEMORY_MB"] = "512"
    env["CORMORANT_WORKER_DEATHS_FD"] = str(deaths_fd)
    return env


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"the worker was not ready within {START_TIMEOUT} s")


def test_each_worker_death_is_reported_with_its_cause_and_the_replica_serves_on(
    tmp_path: Path,
) -> None:
    """Deadline → 504 then 200; ``os._exit`` and ``MemoryError`` → replaced; three deaths
    reported: ``timeout``, ``exit``, ``oom``."""
    source = tmp_path / "model"
    source.mkdir()
    (source / "predict.py").write_text(MODEL)
    deaths = tmp_path / "deaths.jsonl"
    fd = os.open(deaths, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "cormorant.worker", "--source", str(source),
               "--port", str(port), "--server", "workers=1"]  # fmt: skip
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=_env(fd), pass_fds=(fd,)
            )
    finally:
        os.close(fd)

    def predict(value: str) -> httpx.Response:
        return httpx.post(f"{url}/predict", json={"input_params": value}, timeout=30)

    def prediction(value: str) -> Any:
        response = predict(value)
        assert response.status_code == 200, response.text
        return response.json()["prediction"]

    try:
        _wait_ready(url, proc, log)
        looped = predict("loop")
        assert looped.status_code == 504, looped.text
        assert looped.json()["error"]["code"] == "predict_timeout"
        # The replica answers again: the next request waits for the fresh worker.
        assert prediction("after-loop") == "after-loop"

        with pytest.raises(httpx.TransportError):
            predict("exit")  # the worker died mid-request: no answer at all
        assert prediction("after-exit") == "after-exit"

        allocated = predict("allocate")
        assert allocated.status_code == 500, allocated.text
        assert "MemoryError" in allocated.text
        assert prediction("after-oom") == "after-oom"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reported = [json.loads(line) for line in deaths.read_text().splitlines()]
    causes = [death["cause"] for death in reported]
    assert causes == ["timeout", "exit", "oom"], log.read_text()[-3000:]
    assert len({death["pid"] for death in reported}) == 3
