"""Fixtures of the worker tests (helpers in ``worker_testkit.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# --import-mode=importlib puts no test folder on sys.path: the helper module needs it.
sys.path.insert(0, str(Path(__file__).parent))

from worker_testkit import SRC, DyingReplica

from cormorant.common.ports import free_port


@pytest.fixture
def dying_replica(tmp_path: Path) -> Iterator[Callable[[str, dict[str, str]], DyingReplica]]:
    """Starts a ready replica of the model ``source`` with ``settings`` added to its
    environment; stopped after the test."""
    started: list[DyingReplica] = []

    def start(source: str, settings: dict[str, str]) -> DyingReplica:
        model = tmp_path / "model"
        model.mkdir()
        (model / "predict.py").write_text(source)
        deaths = tmp_path / "deaths.jsonl"
        fd = os.open(deaths, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        port = free_port()
        log = tmp_path / "worker.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(p) for p in SRC] + [env.get("PYTHONPATH", "")])
        env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
        env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
        env["CORMORANT_LOG_JSON"] = "false"
        env["CORMORANT_WORKER_REQUEST_TIMEOUT_S"] = "1"
        env["CORMORANT_WORKER_DEATHS_FD"] = str(fd)
        env.update(settings)
        command = [sys.executable, "-m", "cormorant.worker", "--source", str(model),
                   "--port", str(port), "--server", "workers=1"]  # fmt: skip
        try:
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=(fd,)
                )
        finally:
            os.close(fd)
        replica = DyingReplica(f"http://127.0.0.1:{port}", proc, log, deaths)
        started.append(replica)
        replica.wait_ready()
        return replica

    yield start
    for replica in started:
        replica.stop()
