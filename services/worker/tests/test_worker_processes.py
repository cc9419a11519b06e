"""Every process of a replica on its /metrics, labelled by pid, whichever worker answers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cormorant.worker.processes import read_process, register_replica_processes, tree

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")


def test_the_tree_holds_the_root_and_the_processes_below_it() -> None:
    """A child (and its own child) count; once ended they no longer do."""
    # The child starts a grandchild and both wait on their stdin: real processes, no sleep.
    code = (
        "import subprocess, sys; "
        "g = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'], "
        "stdin=subprocess.PIPE); print(g.pid, flush=True); sys.stdin.read(); "
        "g.stdin.close(); g.wait()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        grandchild = int(child.stdout.readline())
        pids = tree(os.getpid())
        assert pids[0] == os.getpid()
        assert {child.pid, grandchild} <= set(pids)
        usage = read_process(child.pid)
        assert usage is not None
        assert usage.memory_bytes > 1_000_000
        assert usage.cpu_seconds >= 0
        assert usage.open_fds is not None
        assert usage.open_fds >= 3
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert child.pid not in tree(os.getpid())
    assert read_process(child.pid) is None


def test_each_process_is_a_sample_labelled_by_pid() -> None:
    """The exposition holds one CPU, memory and open-files sample per process."""
    registry = CollectorRegistry()
    register_replica_processes(registry, os.getpid())
    text = generate_latest(registry).decode()
    pid = os.getpid()
    assert f'cormorant_replica_process_cpu_seconds_total{{pid="{pid}"}} ' in text
    assert f'cormorant_replica_process_resident_memory_bytes{{pid="{pid}"}} ' in text
    assert f'cormorant_replica_process_open_fds{{pid="{pid}"}} ' in text


def test_a_gone_root_yields_no_samples() -> None:
    """A root that ended (a replica being replaced) gives empty families, not an error."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    registry = CollectorRegistry()
    register_replica_processes(registry, ended.pid)
    assert 'pid="' not in generate_latest(registry).decode()
