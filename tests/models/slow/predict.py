"""A model that takes its time: ``SLOW_DELAY_MS`` (from the endpoint's ``env``) per call."""

import os
import time

DELAY = float(os.environ.get("SLOW_DELAY_MS", "0")) / 1000


def predict(*values):
    """How many values it got, after the pause."""
    time.sleep(DELAY)
    return len(values)
