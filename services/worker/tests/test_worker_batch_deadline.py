"""The per-request deadline holds for adaptively batched requests too.

One real replica (gunicorn master, one worker) whose version batches adaptively, with a
one-second deadline: a shared call stuck in a loop answers 504 to each request in it (on
``/predict`` and on the Open Inference Protocol's ``/predict/rows``), the worker is replaced
and reported as a ``timeout`` death, and the replica then answers batched requests again.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
from worker_testkit import DyingReplica

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


def test_a_batched_call_past_the_deadline_answers_504_and_the_worker_is_replaced(
    dying_replica: Callable[[str, dict[str, str]], DyingReplica],
) -> None:
    """/predict and /predict/rows through the batcher: 504 past the deadline, then 200."""
    replica = dying_replica(MODEL, {"CORMORANT_WORKER_ENV": json.dumps(BATCHING)})
    predict = replica.predict

    def rows(*values: str) -> httpx.Response:
        body = {"inputs": [{"name": "rows", "rows": [[v] for v in values]}]}
        return httpx.post(f"{replica.url}/predict/rows", json=body, timeout=30)

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

    reported = replica.stop()
    assert [death["cause"] for death in reported] == ["timeout", "timeout"], replica.tail()
