"""The per-request deadline holds for adaptively batched requests too.

One real replica (gunicorn master, one worker) whose version batches adaptively, with a
one-second deadline: a shared call stuck in a loop answers 504 to each request in it (on
``/predict`` and on the Open Inference Protocol's ``/predict/rows``), the worker is replaced
and reported as a ``timeout`` death, and the replica then answers batched requests again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
SRC = [ROOT / "libs/common/src", ROOT / "libs/sdk/src", ROOT / "services/worker/src"]
# A bound on readiness on a loaded machine, not a timing claim.
START_TIMEOUT = 120.0

MODEL = """\
def predict(rows):
    if any(row[0] == "loop" for row in rows):
        while True:
            pass
    return [row[0] for row in rows]
"""

BATCHING = {
    "CORMORANT_PREDICT_BATCH": "true",
    "CORMORANT_PREDICT_BATCH_MAX_SIZE": "8",
    "CORMORANT_PREDICT_BATCH_MAX_WAIT_MS": "5",
}


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
    env["CORMORANT_WORKER_DEATHS_FD"] = str(deaths_fd)
    env["CORMORANT_WORKER_ENV"] = json.dumps(BATCHING)
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


def test_a_batched_call_past_the_deadline_answers_504_and_the_worker_is_replaced(
    tmp_path: Path,
) -> None:
    """/predict and /predict/rows through the batcher: 504 past the deadline, then 200."""
    source = tmp_path / "model"
    source.mkdir()
    (source / "predict.py").write_text(MODEL)
    deaths = tmp_path / "deaths.jsonl"
    fd = os.open(deaths, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "worker.log"
    env = _env(fd)
    command = [sys.executable, "-m", "cormorant.worker", "--source", str(source),
               "--port", str(port), "--server", "workers=1"]  # fmt: skip
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=(fd,)
            )
    finally:
        os.close(fd)

    def predict(value: str) -> httpx.Response:
        return httpx.post(f"{url}/predict", json={"input_params": value}, timeout=30)

    def rows(*values: str) -> httpx.Response:
        body = {"inputs": [{"name": "rows", "rows": [[v] for v in values]}]}
        return httpx.post(f"{url}/predict/rows", json=body, timeout=30)

    try:
        _wait_ready(url, proc, log)
        assert predict("first").json()["prediction"] == "first"

        looped = predict("loop")
        assert looped.status_code == 504, looped.text
        assert looped.json()["error"]["code"] == "predict_timeout"
        # The fresh worker batches again.
        after = predict("after-loop")
        assert after.status_code == 200, after.text
        assert after.json()["prediction"] == "after-loop"

        looped_rows = rows("a", "loop")
        assert looped_rows.status_code == 504, looped_rows.text
        assert looped_rows.json()["error"]["code"] == "predict_timeout"
        answered = rows("b", "c")
        assert answered.status_code == 200, answered.text
        assert answered.json()["predictions"] == ["b", "c"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reported = [json.loads(line) for line in deaths.read_text().splitlines()]
    assert [death["cause"] for death in reported] == ["timeout", "timeout"], log.read_text()[-3000:]
