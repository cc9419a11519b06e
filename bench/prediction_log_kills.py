"""Every prediction recorded at 100,000: the prediction-log test's scenario at full scale.

A local stack of its own (``cormorant up --no-example`` on free ports, temporary data dir), the
echo model with one gunicorn worker, 100,000 predictions through the gateway from 32 keep-alive
connections; predictlog is SIGKILLed after a third, nats-server after two thirds (the
supervisor restarts both). Anchor: rows in PostgreSQL ÷ answered predictions = 1.000, with 0
missing and 0 duplicate request ids. Also printed: the load's rate and how long the log took
to hold every row after the last answer.

Usage: ``.venv/bin/python bench/prediction_log_kills.py [--predictions 100000]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_prediction_log import (  # noqa: E402  (the scenario lives with its test)
    deploy_echo,
    predict_across_kills,
    running_stack,
)


def main() -> int:
    """Run the scenario once and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=100_000)
    args = parser.parse_args()
    n: int = args.predictions
    with (
        tempfile.TemporaryDirectory(prefix="cormorant-logkills-") as tmp,
        running_stack(Path(tmp) / "data") as stack,
    ):
        echo = deploy_echo(stack)
        started = time.perf_counter()
        ids, _, rows, distinct = predict_across_kills(stack, echo, n)
        elapsed = time.perf_counter() - started
    answered = len(ids)
    missing = len(set(ids)) - distinct
    duplicates = rows - distinct
    print(f"predictions answered: {answered:,} (predictlog and nats-server SIGKILLed mid-load)")
    print(f"rows in the log: {rows:,}; distinct request ids {distinct:,}")
    print(f"missing {missing}, duplicate {duplicates}; whole run incl. restarts {elapsed:.1f} s")
    print(f"ratio rows / predictions: {rows / answered:.3f} (target 1.000)")
    return 0 if rows == answered == distinct else 1


if __name__ == "__main__":
    raise SystemExit(main())
