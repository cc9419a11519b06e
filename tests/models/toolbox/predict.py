"""A test model whose functions expose what the platform did: env, threads, slowness."""

import os
import threading
import time

_barrier = threading.Barrier(4, timeout=20)


def echo_env(name):
    """The value of an environment variable set through the endpoint's `env`."""
    return os.environ.get(name)


def four_at_once(tag):
    """Returns only when four requests are inside predict at the same time."""
    _barrier.wait()
    return tag


def slow(seconds):
    """Sleeps, so concurrent clients pile up in flight."""
    time.sleep(float(seconds))
    return seconds
