"""The prediction spool: answered predictions on disk until JetStream has them.

A replica batches its predictions' events for up to 200 ms before it publishes them; a
process killed in between (SIGKILL, the OOM killer, a deadline) would lose predictions its
clients already got answers for. So each outcome is also copied, as one line of compact JSON
(the column pack's row: request id, received at, latency, status, input, output, error, trace
id), into the current segment of the spool before the answer leaves. A segment is a file
mapped ``MAP_SHARED``: a copy into it lands in the file's pages in the page cache, which
outlive the process exactly as a returned ``write()`` does, without a system call per
prediction (one ``write()`` a row cost about twice the whole append). No ``fsync`` is made, so
a crash of the machine itself (power, kernel panic) may still lose the last seconds; nothing
else does.

A mapped segment starts with a header: ``MAGIC``, then the committed length (little-endian,
8 bytes), which the writer sets after each row's copy with one 8-byte store. A replayer reads
up to it only, so a row the writer died copying is never read, and a row holds no zero byte
(JSON escapes it) where the part of a page the writer had not reached is zeros. A segment
grows by ``GROWTH_BYTES`` of zeros written (not a hole: a full disk is then an error the
writer logs, not a SIGBUS at a store into a page the file system cannot back). Segments
without the header (one ``write()`` a line, by an older worker) are read as lines.

Segments: a writer (one per process) appends to ``<pid>-<n>.spool``, which it holds under an
exclusive ``flock``; every hand-over to the publisher seals the segment (the next prediction
opens a new one), and a sealed segment is deleted once JetStream acknowledged every pack
built from it. A lock is released by the kernel when its process dies, however it dies: a
segment whose lock can be taken belongs to nobody alive, and whoever outlives the writer
(the replica's next worker process, or the deployer before it deletes a dead replica's
directory) replays it — publishes its rows again — and deletes it once acknowledged.

A replayed row keeps its request id and received-at time, the prediction log's key (its
rows are unique on ``(request_id, received_at)``, ``ON CONFLICT DO NOTHING``): a row
published both by the dead process and by its replayer is stored once.

A spool lives in a directory the replica's user code can write, so its content is hostile:
a replayer reads regular files only, owned by the directory's owner (never through a link,
symbolic or hard), a bounded number of bytes (a committed length is bounded by the file's
size and that cap, never trusted), skips lines that are not rows, and labels what it
publishes with the endpoint and version it knows itself, never with anything read from the
file. (User code that truncates the open segment under its writer gets its own process
killed by a SIGBUS: no more than it can do to the process it runs in anyway.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic_core import from_json, to_json

from cormorant.common.bus.packing import Pack
from cormorant.common.bus.predictions import PredictionColumns, prediction_pack

log = logging.getLogger(__name__)

SUFFIX = ".spool"
"""The file name suffix of a segment."""
REPLAY_MAX_BYTES = 64 * 1024 * 1024
"""The most bytes of one segment a replayer reads (a writer seals every 200 ms)."""
MAGIC = b"cmspool1"
"""The first bytes of a mapped segment (a segment without them is of plain lines)."""
HEADER_BYTES = 16
"""A mapped segment's header: ``MAGIC``, then the committed length (rows end there)."""
GROWTH_BYTES = 64 * 1024
"""What a mapped segment grows by when a row does not fit (a hand-over seals it first)."""
_COMMITTED_AT = len(MAGIC)
_COMMITTED = struct.Struct("<Q")
REPLAY_PACK_ROWS = 1024
"""Rows per pack a replayer publishes (each pack splits itself further if too large)."""

Row = tuple[str, float, float, int, Any, Any, str | None, str | None]
"""One answered prediction: request id, received at (POSIX s), latency (s), status, input,
output, error, trace id."""


@dataclass(slots=True)
class Segment:
    """A sealed (or replayed) segment: deleted once every one of its ``rows`` is settled."""

    directory: Path
    name: str
    fd: int
    """Open, holding the segment's lock until it is deleted."""
    rows: int
    settled: int = 0
    done: bool = False

    def settle(self, count: int) -> None:
        """``count`` more of its rows are published (or refused for good); delete it once all
        are."""
        self.settled += count
        if self.settled >= self.rows:
            self.discard()

    def keep(self) -> None:
        """Release the segment's lock and leave it for another replayer."""
        if not self.done:
            self.done = True
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def discard(self) -> None:
        """Delete the segment and release its lock."""
        if self.done:
            return
        self.done = True
        with contextlib.suppress(OSError):
            os.unlink(self.directory / self.name)
        with contextlib.suppress(OSError):
            os.close(self.fd)


class SpoolWriter:
    """One process's appends to the spool in ``directory``; call from one thread (the loop)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1
        self._name = ""
        self._map: mmap.mmap | None = None
        self._committed: memoryview | None = None
        """The header's committed length, as one unsigned 64-bit item of the mapping."""
        self._end = HEADER_BYTES
        """Where the next row goes: the committed length, header included."""
        self._capacity = 0
        """The mapping's (and the file's) size; 0 while no segment is open."""
        self._rows = 0
        self._seq = 0
        self._failed = False
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def append(self, row: Row) -> None:
        """Copy ``row`` into the current segment (opened on first use); never raises: a full
        disk or a value JSON cannot hold only costs the guarantee for that row."""
        try:
            line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            # What orjson cannot write (an integer past 64 bits...), as the pack writes it.
            try:
                line = to_json(row) + b"\n"
            except ValueError:
                return  # not JSON: the pack leaves it out too
        start = self._end
        end = start + len(line)
        if end > self._capacity and not self._make_room(end):
            return
        mapped, committed = self._map, self._committed
        assert mapped is not None
        assert committed is not None
        mapped[start:end] = line
        # Committed only now, after the copy: a death during it leaves the row out of what a
        # replayer reads. One aligned 8-byte store, which a kill cannot cut in two.
        committed[0] = end
        self._end = end
        self._rows += 1

    def seal(self) -> Segment | None:
        """The current segment, closed to appends (the next append opens another); None if
        nothing was written since the last seal."""
        if self._fd < 0:
            return None
        self._unmap()
        segment = Segment(self.directory, self._name, self._fd, self._rows)
        self._fd, self._rows = -1, 0
        if not segment.rows:
            segment.discard()
            return None
        return segment

    def close(self) -> None:
        """Close the open segment as it is: replayed by whoever comes next."""
        self._unmap()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def _make_room(self, end: int) -> bool:
        """A segment (a new one if none is open) with room up to ``end``; False, logged
        once, if the disk cannot give it."""
        try:
            if self._fd < 0:
                self._open()
            capacity = -(-max(end, self._capacity + GROWTH_BYTES) // GROWTH_BYTES) * GROWTH_BYTES
            _extend(self._fd, self._capacity, capacity - self._capacity)
            if self._map is None:
                self._map = mmap.mmap(self._fd, capacity, mmap.MAP_SHARED,
                                      mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
                self._map[:_COMMITTED_AT] = MAGIC
            else:
                self._release()  # a mapping with a view of it cannot move
                self._map.resize(capacity)
            self._committed = _committed_view(self._map)
            self._capacity = capacity
        except (OSError, ValueError) as exc:  # ValueError: mmap's, for what it cannot map
            if not self._failed:
                self._failed = True
                log.warning("predictions are not spooled to %s: %s", self.directory, exc)
            return False
        return True

    def _open(self) -> None:
        self._seq += 1
        name = f"{os.getpid()}-{self._seq}{SUFFIX}"
        fd = os.open(
            self.directory / name,
            os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        # Held until the segment is deleted: a taken lock says its writer still lives.
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd, self._name = fd, name

    def _release(self) -> None:
        if self._committed is not None:
            self._committed.release()
            self._committed = None

    def _unmap(self) -> None:
        # The pages stay in the page cache, the file's: unmapping only ends our view of them.
        self._release()
        if self._map is not None:
            with contextlib.suppress(OSError, ValueError):
                self._map.close()
            self._map = None
        self._end, self._capacity = HEADER_BYTES, 0


_ZEROS = memoryview(bytes(GROWTH_BYTES))


def _committed_view(mapped: mmap.mmap) -> memoryview:
    """The committed length of a mapped segment's header, as one little-endian ``Q`` item."""
    if sys.byteorder != "little":  # the header is little-endian wherever it was written
        raise ValueError("a mapped spool needs a little-endian machine")
    return memoryview(mapped)[_COMMITTED_AT:HEADER_BYTES].cast("Q")


def _extend(fd: int, offset: int, size: int) -> None:
    """Write ``size`` zero bytes at ``offset``: the file system reserves room for them now,
    so a full disk is an ``OSError`` here rather than a SIGBUS at the first store into a page
    of a hole it cannot back; not ``posix_fallocate``, whose blocks (allocated at once, where
    written pages wait for the writeback) make each deletion of a segment cost milliseconds."""
    while size > 0:
        written = os.pwrite(fd, _ZEROS[:size], offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no room for the spool segment to grow")
        offset += written
        size -= written


@dataclass(slots=True)
class Orphan:
    """A segment left by a dead writer, locked by its replayer."""

    segment: Segment
    rows: list[Row] = field(default_factory=list)


def orphans(directory: Path) -> Iterator[Orphan]:
    """The segments under ``directory`` whose writer is dead, each locked and read (its rows
    checked); a segment another replayer holds, or a live writer, is skipped."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        owner = os.fstat(dir_fd).st_uid
        names = sorted(name for name in os.listdir(dir_fd) if name.endswith(SUFFIX))
        for name in names:
            orphan = _take(directory, dir_fd, name, owner)
            if orphan is not None:
                yield orphan
    finally:
        os.close(dir_fd)


def _take(directory: Path, dir_fd: int, name: str, owner: int) -> Orphan | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)  # fmt: skip
    except OSError:
        return None  # gone (replayed by another), or a link
    try:
        info = os.fstat(fd)
        # A writer's own regular file: not a device or pipe, nor a hard link to a file of
        # someone else (which ``O_NOFOLLOW`` would not catch).
        if not stat.S_ISREG(info.st_mode) or info.st_uid != owner:
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # replayed and deleted by another since we opened it
            return None
        data = _completed(fd, info.st_size)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            log.warning("spool segment %s/%s not replayed: %s", directory, name, exc)
        return None
    segment = Segment(directory, name, fd, 0)
    rows = list(_rows(data))
    segment.rows = len(rows)
    return Orphan(segment, rows)


def _completed(fd: int, size: int) -> bytes:
    """What the writer of a segment (of ``size`` bytes) completed: a mapped segment's rows up
    to its committed length, a plain one's lines; never more than ``REPLAY_MAX_BYTES``."""
    head = os.pread(fd, HEADER_BYTES, 0)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        return os.pread(fd, max(0, min(size, REPLAY_MAX_BYTES)), 0)
    (committed,) = _COMMITTED.unpack_from(head, _COMMITTED_AT)
    # Written by whoever can write the directory: bounded by the file and the cap, and a
    # length that cuts a row short only loses that row (it is not JSON, or holds zeros).
    length = min(committed, size, HEADER_BYTES + REPLAY_MAX_BYTES) - HEADER_BYTES
    return os.pread(fd, length, HEADER_BYTES) if length > 0 else b""


def _rows(data: bytes) -> Iterator[Row]:
    """The well-formed rows of a segment's bytes (a line cut short by a death is skipped)."""
    for line in data.split(b"\n"):
        if not line or b"\0" in line:
            # A writer's rows hold no zero byte (JSON escapes it): one here is a page the
            # writer had not reached, never part of a row.
            continue
        try:
            row = from_json(line)
        except ValueError:
            continue
        if _is_row(row):
            yield tuple(row)


def _is_row(row: object) -> bool:
    if type(row) is not list or len(row) != 8:
        return False
    request_id, received, latency, status, _, _, error, trace_id = row
    return (
        type(request_id) is str
        and type(received) in (int, float)
        and type(latency) in (int, float)
        and type(status) is int
        and (error is None or type(error) is str)
        and (trace_id is None or type(trace_id) is str)
    )


@dataclass(frozen=True, slots=True)
class Labels:
    """What a replayer knows itself of the predictions it replays."""

    endpoint: str
    endpoint_id: str | None
    version: str


class PackSink(Protocol):
    """Where replayed packs go (a ``BatchedPublisher``)."""

    def publish_pack(
        self, subject: str, pack: Pack, *, on_settled: Callable[[int], None] | None = None
    ) -> bool:
        """Queue ``pack``; False if it cannot be."""
        ...


def packs(rows: list[Row], labels: Labels) -> Iterator[tuple[Pack | None, int]]:
    """``rows`` as column packs, with how many rows each stands for (left-out rows count)."""
    occurred_at = datetime.now(UTC)
    for start in range(0, len(rows), REPLAY_PACK_ROWS):
        part = rows[start : start + REPLAY_PACK_ROWS]
        request_ids, received, latencies, statuses, inputs, outputs, errors, trace_ids = (
            list(column) for column in zip(*part, strict=True)
        )
        columns = PredictionColumns(
            labels.endpoint, labels.endpoint_id, labels.version, occurred_at,
            request_ids, received, [latency * 1000.0 for latency in latencies], statuses,
            inputs, outputs, errors, trace_ids,
        )  # fmt: skip
        pack, left_out = prediction_pack(columns)
        if left_out:
            log.warning("%d replayed prediction(s) left out: not JSON", len(left_out))
        yield pack, len(part) - (pack.count if pack is not None else 0)


def replay(directory: Path, labels: Labels, sink: PackSink, subject: str) -> int:
    """Publish every orphaned segment under ``directory`` on ``sink``; each is deleted once
    settled. The number of rows queued."""
    queued = 0
    for orphan in orphans(directory):
        segment = orphan.segment
        if not orphan.rows:
            segment.discard()
            continue
        for pack, unsent in packs(orphan.rows, labels):
            if unsent:
                segment.settle(unsent)
            if pack is None:
                continue
            if sink.publish_pack(subject, pack, on_settled=segment.settle):
                queued += pack.count
            else:
                # Not queued (buffer full): the segment stays for the next replayer.
                segment.keep()
                break
        log.info("replayed %d prediction(s) of a dead worker from %s/%s",
                 len(orphan.rows), segment.directory, segment.name)  # fmt: skip
    return queued
