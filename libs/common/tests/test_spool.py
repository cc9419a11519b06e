"""The prediction spool: a dead writer's rows are replayed once acked, a live one's never,
and what user code could plant in the directory is read as hostile."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nats
import orjson
import pytest

from cormorant.common import bus
from cormorant.common.bus import PREDICTIONS_STREAM, spool
from cormorant.common.bus.packing import Pack
from cormorant.common.events import PredictionLogged
from cormorant.devstack.testing.spooling import (
    DEAD_WRITER_RECEIVED_AT,
    spool_and_die,
    spool_segments,
)

LABELS = spool.Labels("spooled", None, "3")
SUBJECT = f"{PredictionLogged.subject_prefix}.spooled"


def row(i: int) -> spool.Row:
    return (f"req-{i}", 1_700_000_000.25 + i, 0.002, 200, [i, "x"], {"y": i}, None, None)


class Recorder:
    """A ``PackSink`` that keeps what it is given and settles nothing by itself."""

    def __init__(self) -> None:
        self.packs: list[tuple[str, Pack, Callable[[int], None] | None]] = []

    def publish_pack(
        self, subject: str, pack: Pack, *, on_settled: Callable[[int], None] | None = None
    ) -> bool:
        self.packs.append((subject, pack, on_settled))
        return True


async def test_a_killed_writers_rows_are_published_and_the_segment_deleted_once_acked(
    nats_url: str, tmp_path: Path
) -> None:
    """SIGKILL after the writes: every row reaches JetStream with the replayer's labels, and
    the segment is gone once the acks came back."""
    spool_and_die(tmp_path, 5)
    assert len(spool_segments(tmp_path)) == 1
    nc = await bus.connect(nats_url, name="spool-test")
    try:
        await bus.ensure_streams(nc.jetstream())
        publisher = bus.BatchedPublisher(nc, name="replayer")
        await publisher.start()
        assert spool.replay(tmp_path, LABELS, publisher, SUBJECT) == 5
        assert await publisher.flush(30)
        await publisher.stop()
    finally:
        await bus.close(nc)
    assert spool_segments(tmp_path) == []

    reader = await nats.connect(nats_url)
    try:
        sub = await reader.jetstream().pull_subscribe(SUBJECT, stream=PREDICTIONS_STREAM)
        [msg] = await sub.fetch(1, timeout=10)
    finally:
        await reader.close()
    events = bus.decode_all(msg.data, msg.headers)
    assert [e.request_id for e in events] == [f"dead-{i}" for i in range(5)]
    assert all(isinstance(e, PredictionLogged) for e in events)
    logged = [e for e in events if isinstance(e, PredictionLogged)]
    assert {(e.endpoint, e.version) for e in logged} == {("spooled", "3")}
    assert logged[2].input == [2, "x"]
    assert logged[2].received_at.timestamp() == DEAD_WRITER_RECEIVED_AT + 2


async def test_a_live_writers_segments_are_never_replayed(tmp_path: Path) -> None:
    """The open segment and a sealed one not yet acked hold their writer's lock."""
    writer = spool.SpoolWriter(tmp_path)
    writer.append(row(0))
    sealed = writer.seal()
    assert sealed is not None
    writer.append(row(1))
    recorder = Recorder()
    assert spool.replay(tmp_path, LABELS, recorder, SUBJECT) == 0
    assert len(spool_segments(tmp_path)) == 2
    sealed.settle(1)
    assert len(spool_segments(tmp_path)) == 1
    writer.close()  # as a death would: the open segment is now an orphan
    assert spool.replay(tmp_path, LABELS, recorder, SUBJECT) == 1
    [(_, pack, settle)] = recorder.packs
    assert pack.count == 1
    assert settle is not None
    settle(1)
    assert spool_segments(tmp_path) == []


async def test_what_user_code_plants_in_the_spool_is_read_as_hostile(tmp_path: Path) -> None:
    """A link is not followed, a line that is not a row is skipped, a replayer labels rows
    with what it knows itself."""
    secret = tmp_path / "secret"
    secret.write_text('["leak", 1.0, 0.1, 200, "root only", null, null, null]\n')
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "0-1.spool").symlink_to(secret)
    (directory / "0-2.spool").write_bytes(
        b'{"endpoint": "someone-else"}\n'
        b'["ok", 2.0, 0.1, 200, 1, 2, null, null]\n'
        b'["bad status", 2.0, 0.1, "200", 1, 2, null, null]\n'
        b'["cut short", 2.0, 0.1, 2'
    )
    recorder = Recorder()
    assert spool.replay(directory, LABELS, recorder, SUBJECT) == 1
    [(subject, pack, _)] = recorder.packs
    assert subject == SUBJECT
    events = bus.decode_all(pack.payload, pack.headers)
    assert [(e.request_id, e.endpoint) for e in events if isinstance(e, PredictionLogged)] == [
        ("ok", "spooled")
    ]
    assert secret.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user takes root")
async def test_a_hard_link_to_someone_elses_file_is_not_read(tmp_path: Path) -> None:
    """A segment not owned by the spool directory's owner (a hard link user code made to a
    file it cannot read itself) is skipped."""
    foreign = tmp_path / "foreign"
    foreign.write_text('["leak", 1.0, 0.1, 200, "secret", null, null, null]\n')
    os.chown(foreign, 12345, 12345)
    directory = tmp_path / "spool"
    directory.mkdir()
    os.link(foreign, directory / "0-1.spool")
    recorder = Recorder()
    assert spool.replay(directory, LABELS, recorder, SUBJECT) == 0
    assert recorder.packs == []


def committed(path: Path) -> int:
    """The committed length in a mapped segment's header."""
    head = path.read_bytes()[: spool.HEADER_BYTES]
    assert head.startswith(spool.MAGIC)
    return int.from_bytes(head[len(spool.MAGIC) :], "little")


def orphaned(directory: Path, count: int) -> Path:
    """A segment of ``count`` rows whose writer is gone (closed, as a death leaves it)."""
    writer = spool.SpoolWriter(directory)
    for i in range(count):
        writer.append(row(i))
    writer.close()
    [name] = spool_segments(directory)
    return directory / name


def replayed_ids(directory: Path, *, ack: bool = True) -> list[str]:
    """The request ids a replay of ``directory`` publishes (acked: their segments go)."""
    recorder = Recorder()
    spool.replay(directory, LABELS, recorder, SUBJECT)
    ids = []
    for _, pack, settle in recorder.packs:
        ids += [e.request_id for e in bus.decode_all(pack.payload, pack.headers)
                if isinstance(e, PredictionLogged)]  # fmt: skip
        if ack and settle is not None:
            settle(pack.count)
    return ids


async def test_a_row_the_writer_died_copying_is_skipped_and_the_committed_ones_kept(
    tmp_path: Path,
) -> None:
    """Rows are copied into a mapping and committed after: a death in the middle of a copy
    (the row's first half there, or all of it but not its commit) loses that row only."""
    path = orphaned(tmp_path, 3)
    end = committed(path)
    assert end == spool.HEADER_BYTES + sum(len(orjson.dumps(row(i))) + 1 for i in range(3))
    line = orjson.dumps(row(3)) + b"\n"
    with path.open("r+b") as file:
        file.seek(end)
        file.write(line[: len(line) // 2])
    assert replayed_ids(tmp_path) == ["req-0", "req-1", "req-2"]

    path = orphaned(tmp_path, 2)
    with path.open("r+b") as file:
        file.seek(committed(path))
        file.write(line)  # copied whole, but never committed
    assert replayed_ids(tmp_path) == ["req-0", "req-1"]


async def test_a_copy_cut_anywhere_never_yields_a_wrong_row(tmp_path: Path) -> None:
    """Whatever part of a row's bytes a death left in the mapping (the rest still zeros, as
    a fresh page is), and even with its length committed (a hostile header), the row is
    skipped, never read as something else."""
    line = orjson.dumps(row(7)) + b"\n"
    for cut in range(1, len(line)):
        for torn in (line[:cut] + bytes(len(line) - cut), bytes(cut) + line[cut:]):
            for name in spool_segments(tmp_path):
                (tmp_path / name).unlink()
            path = orphaned(tmp_path, 1)
            with path.open("r+b") as file:
                start = committed(path)
                file.seek(start)
                file.write(torn)
                file.seek(len(spool.MAGIC))
                file.write((start + len(torn)).to_bytes(8, "little"))
            assert replayed_ids(tmp_path) == ["req-0"], (cut, torn)


async def test_a_hostile_committed_length_is_bounded_by_the_file(tmp_path: Path) -> None:
    """A header claiming more than the file holds reads the file's rows and no more; one
    claiming less than the header reads nothing; a length into a row skips that row."""
    data = orphaned(tmp_path, 2).read_bytes()
    end = committed(tmp_path / spool_segments(tmp_path)[0])
    replayed_ids(tmp_path)
    for claimed, expected in (
        (2**64 - 1, ["req-0", "req-1"]),
        (len(data) + 10**9, ["req-0", "req-1"]),
        (3, []),
        (end - 5, ["req-0"]),
    ):
        content = spool.MAGIC + claimed.to_bytes(8, "little") + data[spool.HEADER_BYTES :]
        (tmp_path / "1-1.spool").write_bytes(content)
        assert replayed_ids(tmp_path) == expected, claimed
        assert spool_segments(tmp_path) == []
    # A header and nothing else, and a header cut short.
    for content in (spool.MAGIC + (2**63).to_bytes(8, "little"), spool.MAGIC + b"\xff\xff"):
        for name in spool_segments(tmp_path):
            (tmp_path / name).unlink()
        (tmp_path / "1-1.spool").write_bytes(content)
        assert replayed_ids(tmp_path) == []


async def test_a_row_larger_than_a_segment_grows_it(tmp_path: Path) -> None:
    """A segment grows by ``GROWTH_BYTES``, or more for what does not fit, rows intact."""
    writer = spool.SpoolWriter(tmp_path)
    big = "x" * (spool.GROWTH_BYTES * 2)
    writer.append(row(0))
    writer.append(("big", 1.0, 0.1, 200, big, None, None, None))
    writer.append(row(2))
    writer.close()
    [name] = spool_segments(tmp_path)
    [orphan] = spool.orphans(tmp_path)
    assert [r[0] for r in orphan.rows] == ["req-0", "big", "req-2"]
    assert orphan.rows[1][4] == big
    orphan.segment.discard()
    assert not (tmp_path / name).exists()


async def test_a_segment_of_plain_lines_is_still_replayed(tmp_path: Path) -> None:
    """A segment written one ``write()`` a row (a worker of the previous release, during an
    upgrade) has no header: it is read as lines."""
    (tmp_path / "1-1.spool").write_bytes(
        orjson.dumps(row(0)) + b"\n" + orjson.dumps(row(1)) + b"\n" + b'["cut short", 2.0'
    )
    assert replayed_ids(tmp_path, ack=False) == ["req-0", "req-1"]
    assert spool_segments(tmp_path) == ["1-1.spool"]  # until acked


_ANSWERING_WRITER = (
    "import os, sys\n"
    "from pathlib import Path\n"
    "from cormorant.common.bus.spool import SpoolWriter\n"
    "writer = SpoolWriter(Path(sys.argv[1]))\n"
    "i = 0\n"
    "while True:\n"
    "    writer.append((f'req-{i}', 1.0 + i, 0.001, 200, [i, 'x' * (i % 300)], {'y': i},"
    " None, None))\n"
    "    os.write(1, b'%d\\n' % i)  # the answer leaves after the row is spooled\n"
    "    i += 1\n"
    "    if i % 700 == 0:\n"
    "        writer.seal()  # a hand-over: kept until acked, which never comes\n"
)


@pytest.mark.parametrize("answers", [1, 333, 2500])
def test_a_writer_killed_while_appending_left_every_row_it_answered(
    tmp_path: Path, answers: int
) -> None:
    """SIGKILL at whatever instant the writer is at, appending without pause: every row whose
    answer left is replayed, each exactly as written, and nothing else."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _ANSWERING_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE, cwd="/",
    )  # fmt: skip
    assert writer.stdout is not None
    answered = -1
    while answered < answers - 1:
        line = writer.stdout.readline()
        assert line, "the writer ended by itself"
        answered = int(line)
    writer.kill()
    rest = writer.stdout.read()
    writer.wait()
    answered = max([answered, *map(int, rest.split())])

    rows = [row for orphan in spool.orphans(tmp_path) for row in orphan.rows]
    rows.sort(key=lambda r: r[1])
    # Every answered row, and at most the one row spooled whose answer never left.
    assert [r[0] for r in rows[: answered + 1]] == [f"req-{i}" for i in range(answered + 1)]
    assert len(rows) - (answered + 1) in (0, 1)
    for i, spooled in enumerate(rows):
        assert spooled == (f"req-{i}", 1.0 + i, 0.001, 200, [i, "x" * (i % 300)], {"y": i},
                           None, None)  # fmt: skip


_CRAMPED_WRITER = (
    "import resource, signal, sys\n"
    "from pathlib import Path\n"
    "from cormorant.common.bus.spool import SpoolWriter\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "writer = SpoolWriter(Path(sys.argv[1]))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
    "for i in range(3):\n"
    "    writer.append((f'req-{i}', 1.0, 0.1, 200, 'x' * 3000, None, None, None))\n"
    "segment = writer.seal()\n"
    "print(0 if segment is None else segment.rows)\n"
)


def test_a_segment_that_cannot_grow_costs_only_its_rows(tmp_path: Path) -> None:
    """No room for a segment (files capped at 4 kB here, as a full disk would refuse): the
    append gives up on the row and the writer lives on, no signal, no exception."""
    done = subprocess.run(
        [sys.executable, "-c", _CRAMPED_WRITER, str(tmp_path)],
        capture_output=True, text=True, cwd="/", check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]
    assert "predictions are not spooled" in done.stderr
