"""A worker process that dies is replaced, and its master reports why on ``deaths_fd``.

One real replica (gunicorn master, one worker) with a deadline and a memory limit: a predict
stuck in a loop gets 504 and its worker is replaced, ``os._exit`` and a ``MemoryError`` end
theirs, and each death is one JSON line with its cause on the descriptor the master was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from worker_testkit import DyingReplica

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


def test_each_worker_death_is_reported_with_its_cause_and_the_replica_serves_on(
    dying_replica: Callable[[str, dict[str, str]], DyingReplica],
) -> None:
    """Deadline → 504 then 200; ``os._exit`` and ``MemoryError`` → replaced; three deaths
    reported: ``timeout``, ``exit``, ``oom``."""
    replica = dying_replica(MODEL, {"CORMORANT_WORKER_MEMORY_MB": "512"})
    predict = replica.predict

    def prediction(value: str) -> Any:
        response = predict(value)
        assert response.status_code == 200, response.text
        return response.json()["prediction"]

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

    reported = replica.stop()
    causes = [death["cause"] for death in reported]
    assert causes == ["timeout", "exit", "oom"], replica.tail()
    assert len({death["pid"] for death in reported}) == 3
