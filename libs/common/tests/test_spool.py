"""The prediction spool: a dead writer's rows are replayed once acked, a live one's never,
and what user code could plant in the directory is read as hostile."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import nats
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
