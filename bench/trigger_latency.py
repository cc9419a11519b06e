"""Trigger latency: from ``log_metric`` in predict to the trigger's action, against its bound.

One local stack (``cormorant up`` on free ports, its own data directory) whose alerts service
sends e-mail to an aiosmtpd server in this process; a model whose predict logs its input as
``accuracy``; a trigger ``accuracy < 0.8`` every ``--every`` seconds, ``min_events`` 1, no
cool-down, e-mailing. Each round waits a random fraction of ``every`` (so the value lands at any
phase of the evaluation schedule), predicts 0.5 through the gateway and takes the time from
sending the request (predict logs the value while answering it) to the e-mail's arrival. The
anchor is the issue's bound, 2 × every + 1 s: the worst round's latency is printed as a ratio to
it (≤ 1 meets it). Prints e.g.::

    trigger_latency: every 2 s, 8 rounds: median 1.62 s, worst 2.31 s; bound 5.00 s, worst/bound 0.46
"""  # noqa: E501

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from cormorant.alerts.testing import smtp_server
from cormorant.devstack.testing.running import running_stack
from cormorant.sdk import Endpoint

ROOT = Path(__file__).resolve().parents[1]
PREDICT = """\
from cormorant.sdk import Endpoint


def predict(accuracy):
    Endpoint().log_metric("accuracy", float(accuracy))
    return accuracy
"""


def main() -> None:
    """Run the rounds and print the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--every", type=int, default=2, help="the trigger's interval, seconds")
    parser.add_argument("--rounds", type=int, default=8, help="predictions to time")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per round at most")
    args = parser.parse_args()
    bound = 2 * args.every + 1.0
    with tempfile.TemporaryDirectory() as tmp, smtp_server() as (mailbox, port):
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "predict.py").write_text(PREDICT)
        settings = {"CORMORANT_LOG_LEVEL": "WARNING", "CORMORANT_ALERTS_SMTP_PORT": str(port)}
        with running_stack(Path(tmp) / "data", settings, cwd=ROOT, timeout=300) as stack:
            url = stack.url
            client = stack.client()
            created = client.endpoints.create("latency", str(model_dir), server={"workers": 1})
            client.endpoints.wait_until_running(created["slug"])
            model = Endpoint(created["slug"], token=created["token"], url=url)
            model.predict(0.9)  # warm: the first request pays the replica's connection set-up
            client.triggers.create(
                created["slug"], tag="accuracy", comparison="lt", value=0.8,
                every=args.every, min_events=1, cooldown=0, action={"email": ["b@x.org"]},
            )  # fmt: skip
            latencies = []
            for _ in range(args.rounds):
                time.sleep(random.uniform(0, args.every))  # a random phase of the schedule
                seen = len(mailbox.messages)
                sent = time.monotonic()
                model.predict(0.5)
                deadline = sent + args.timeout
                while len(mailbox.messages) == seen:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"no e-mail within {args.timeout:g} s")
                    time.sleep(0.01)  # polling the mailbox, 10 ms resolution
                latencies.append(mailbox.arrived[seen] - sent)
            client.close()
    worst = max(latencies)
    print(
        f"trigger_latency: every {args.every} s, {args.rounds} rounds: median "
        f"{statistics.median(latencies):.2f} s, worst {worst:.2f} s; bound {bound:.2f} s, "
        f"worst/bound {worst / bound:.2f}"
    )


if __name__ == "__main__":
    main()
