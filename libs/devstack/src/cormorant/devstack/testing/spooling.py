"""A prediction spool left by a dead writer, for the tests of whoever replays it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from cormorant.common.bus import spool

DEAD_WRITER_RECEIVED_AT = 1_700_000_000.25
"""When the dead writer's row ``i`` was received: this, plus ``i`` seconds."""

_DEAD_WRITER = (
    "import os, signal, sys\n"
    "from pathlib import Path\n"
    "from cormorant.common.bus.spool import SpoolWriter\n"
    "writer = SpoolWriter(Path(sys.argv[1]))\n"
    "for i in range(int(sys.argv[2])):\n"
    f"    writer.append((f'dead-{{i}}', {DEAD_WRITER_RECEIVED_AT} + i, 0.002, 200, [i, 'x'],"
    " {'y': i}, None, None))\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)


def spool_segments(directory: Path) -> list[str]:
    """The names of the spool's segment files, sorted."""
    return sorted(path.name for path in directory.glob(f"*{spool.SUFFIX}"))


def spool_and_die(directory: Path, count: int) -> None:
    """A worker's stand-in: spools ``count`` answered predictions (``dead-0``, ``dead-1``, ...,
    input ``[i, "x"]``, output ``{"y": i}``), then is SIGKILLed before it publishes any.

    It runs under the uid of the directory's owner when we are root, as a contained replica's
    workers do (their own uid and gid); otherwise under ours.
    """
    owner = directory.stat().st_uid if os.geteuid() == 0 else None
    died = subprocess.run(
        [sys.executable, "-c", _DEAD_WRITER, str(directory), str(count)],
        user=owner, group=owner, extra_groups=[] if owner is not None else None,
        cwd="/", check=False,
    )  # fmt: skip
    assert died.returncode == -signal.SIGKILL
