"""The prediction spool's cost per answered prediction, measured alone.

A worker appends each answered prediction to its spool before the answer leaves
(``cormorant.common.bus.spool``); this times ``SpoolWriter.append`` on an iris-sized row, with
a seal and a delete every ``--seal-every`` rows as the worker's hand-overs and acks do, and,
for comparison, the parts such an append is made of: the row's JSON (``orjson.dumps``), one
``write()`` of it to a file, and one copy of it into a shared mapping of a file. Best of
``--trials`` runs of ``--rows`` rows, in µs per row. Bounded and single-threaded: it runs in a
few seconds and needs no server. Prints::

    spool_append: append 0.57 µs per row (orjson.dumps 0.21, write() 0.92, mmap copy 0.21)
"""

from __future__ import annotations

import argparse
import mmap
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from cormorant.common.bus.spool import Row, SpoolWriter

ROW: Row = ("9f1c2d3e4b5a69788796a5b4c3d2e1f0", 1_765_000_000.123456, 0.000812, 200,
            [[5.1, 3.5, 1.4, 0.2]], [0], None, None)  # fmt: skip


def best(trials: int, run: Callable[[], float]) -> float:
    """The fastest of ``trials`` runs (each returns its µs per row)."""
    return min(run() for _ in range(trials))


def appends(directory: Path, rows: int, seal_every: int) -> float:
    """µs per ``SpoolWriter.append``, a seal and a delete every ``seal_every`` rows."""
    writer = SpoolWriter(directory)
    row = ROW
    started = time.perf_counter_ns()
    for index in range(rows):
        writer.append(row)
        if index % seal_every == seal_every - 1:
            segment = writer.seal()
            if segment is not None:
                segment.discard()
    elapsed = time.perf_counter_ns() - started
    writer.close()
    for path in directory.iterdir():
        path.unlink()
    return elapsed / rows / 1000


def dumps(rows: int) -> float:
    """µs per ``orjson.dumps`` of the row and its newline."""
    row = ROW
    started = time.perf_counter_ns()
    for _ in range(rows):
        orjson.dumps(row) + b"\n"
    return (time.perf_counter_ns() - started) / rows / 1000


def writes(directory: Path, rows: int) -> float:
    """µs per ``write()`` of the row's bytes to a file opened for appending."""
    line = orjson.dumps(ROW) + b"\n"
    path = directory / "write.bench"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter_ns()
        for _ in range(rows):
            os.write(fd, line)
        return (time.perf_counter_ns() - started) / rows / 1000
    finally:
        os.close(fd)
        path.unlink()


def copies(directory: Path, rows: int) -> float:
    """µs per copy of the row's bytes into a shared mapping of a file (page faults
    included: the file is new, as a fresh segment is)."""
    line = orjson.dumps(ROW) + b"\n"
    size = len(line)
    path = directory / "mmap.bench"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size * rows)
        mapped = mmap.mmap(fd, size * rows, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        position = 0
        started = time.perf_counter_ns()
        for _ in range(rows):
            end = position + size
            mapped[position:end] = line
            position = end
        elapsed = time.perf_counter_ns() - started
        mapped.close()
        return elapsed / rows / 1000
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    """Parse the options, run the measurements, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per trial")
    parser.add_argument("--trials", type=int, default=3, help="trials; the best one counts")
    parser.add_argument("--seal-every", type=int, default=1000, help="rows per segment")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=args.dir) as name:
        directory = Path(name)
        append = best(args.trials, lambda: appends(directory, args.rows, args.seal_every))
        dumped = best(args.trials, lambda: dumps(args.rows))
        written = best(args.trials, lambda: writes(directory, args.rows))
        copied = best(args.trials, lambda: copies(directory, args.rows))
    print(
        f"spool_append: append {append:.2f} µs per row (orjson.dumps {dumped:.2f}, "
        f"write() {written:.2f}, mmap copy {copied:.2f})"
    )


if __name__ == "__main__":
    main()
