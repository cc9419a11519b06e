"""Processes that die with their parent, and recorded processes stopped by pid and command line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil

from cormorant.common.lifetime import (
    ProcessRecord,
    read_records,
    stop_recorded,
    write_record,
)

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def test_a_child_with_the_parent_death_hook_dies_when_its_parent_is_killed() -> None:
    """SIGKILL of the parent (no chance to clean up) still ends the child, by the kernel."""
    code = (
        "import subprocess, sys, time\n"
        "from cormorant.common.lifetime import parent_death_hook\n"
        f"child = subprocess.Popen({SLEEP!r}, preexec_fn=parent_death_hook())\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = psutil.Process(int(parent.stdout.readline()))
    parent.kill()
    parent.wait()
    child.wait(timeout=30)  # raises TimeoutExpired if it outlived its parent


def test_recorded_processes_are_stopped_only_while_pid_and_command_line_match(
    tmp_path: Path,
) -> None:
    """The recorded process gets SIGTERM; one that ignores it is killed with its whole group
    after the grace period; a pid now running another command line is left alone; every
    record is removed."""
    mine = subprocess.Popen(SLEEP, start_new_session=True)
    stubborn_code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"child = subprocess.Popen({SLEEP!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    stubborn_cmd = [sys.executable, "-c", stubborn_code]
    stubborn = subprocess.Popen(
        stubborn_cmd, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    other = subprocess.Popen(SLEEP)
    try:
        assert stubborn.stdout is not None
        forked = psutil.Process(int(stubborn.stdout.readline()))
        write_record(tmp_path, ProcessRecord("mine", mine.pid, tuple(SLEEP)))
        write_record(tmp_path, ProcessRecord("stubborn", stubborn.pid, tuple(stubborn_cmd)))
        write_record(tmp_path, ProcessRecord("reused", other.pid, ("python", "-m", "gone")))

        stopped = stop_recorded(tmp_path, grace_s=1.0)

        assert sorted(record.name for record in stopped) == ["mine", "stubborn"]
        assert mine.wait(10) == -signal.SIGTERM
        assert stubborn.wait(10) == -signal.SIGKILL
        forked.wait(timeout=10)
        assert other.poll() is None
        assert read_records(tmp_path) == []
    finally:
        for process in (mine, stubborn, other):
            process.kill()
            process.wait()
