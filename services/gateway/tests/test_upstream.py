"""The gateway's HTTP/1.1 client against a real socket server speaking just enough HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gateway_testkit import eventually, free_port

from cormorant.gateway.upstream import ConnectFailed, Pool, UpstreamBroken, UpstreamTimedOut

HEAD = b"POST /predict HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n"
JSON_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Server:
    """Answers each request per ``mode``; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.mode = "json"
        self.writers: list[asyncio.StreamWriter] = []
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                if self.mode == "json":
                    writer.write(JSON_ANSWER)
                elif self.mode == "chunked":
                    writer.write(CHUNKED + b'6\r\n{"a":1\r\n')
                    await writer.drain()
                    await self.release.wait()
                    writer.write(b"1\r\n}\r\n0\r\n\r\n")
                elif self.mode == "silent":
                    await self.release.wait()
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    """A server on a free port."""
    state = Server()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    async with listener:
        yield state, listener.sockets[0].getsockname()[1]
        state.release.set()


async def exchange(pool: Pool, limit_s: float = 5.0) -> bytes:
    """One request; the whole answer body."""
    conn = await pool.acquire()
    conn.arm(limit_s)
    conn.send(HEAD, b"{}")
    try:
        await conn.read_head()
        body = b""
        while (data := await conn.read()) is not None:
            body += data
        return body
    finally:
        pool.release(conn)


async def test_keep_alive_reuse_and_idle_expiry(server: tuple[Server, int]) -> None:
    """One connection carries sequential requests; past idle_s it is replaced, not reused."""
    state, port = server
    pool = Pool("127.0.0.1", port, idle_s=5.0)
    for _ in range(5):
        assert await exchange(pool) == b"{}"
    assert state.connections == 1
    conn = pool._idle[-1]
    conn.idle_since -= 10  # as if idle for longer than idle_s
    assert await exchange(pool) == b"{}"
    assert state.connections == 2
    assert conn.closed
    # The server closing an idle connection drops it from the pool.
    state.writers[-1].close()
    await eventually(lambda: not pool._idle, what="closed connection forgotten")
    assert await exchange(pool) == b"{}"
    assert state.connections == 3
    pool.close()


async def test_chunked_answer_arrives_piece_by_piece(server: tuple[Server, int]) -> None:
    """A chunked body is readable before its end arrives."""
    state, port = server
    state.mode = "chunked"
    pool = Pool("127.0.0.1", port)
    conn = await pool.acquire()
    conn.arm(5)
    conn.send(HEAD, b"{}")
    await conn.read_head()
    assert conn.status == 200
    assert (b"content-type", b"application/x-ndjson") in conn.headers
    assert await conn.read() == b'{"a":1'
    assert not conn.complete
    state.release.set()
    assert await conn.read() == b"}"
    assert await conn.read() is None
    pool.release(conn)
    assert len(pool._idle) == 1
    pool.close()


async def test_timeout_and_refused_connection(server: tuple[Server, int]) -> None:
    """A silent replica times out (and its connection is not kept); a closed port refuses."""
    state, port = server
    state.mode = "silent"
    pool = Pool("127.0.0.1", port)
    with pytest.raises(UpstreamTimedOut):
        await exchange(pool, limit_s=0.2)
    assert not pool._idle
    refused = Pool("127.0.0.1", free_port())
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
        await refused.acquire()


async def test_a_replica_hanging_up_mid_answer_breaks_the_exchange(
    server: tuple[Server, int],
) -> None:
    """A connection closed before the answer completes raises UpstreamBroken."""
    state, port = server
    state.mode = "chunked"
    pool = Pool("127.0.0.1", port)
    conn = await pool.acquire()
    conn.arm(5)
    conn.send(HEAD, b"{}")
    await conn.read_head()
    assert await conn.read() == b'{"a":1'
    state.writers[-1].transport.abort()
    with pytest.raises(UpstreamBroken):
        await conn.read()
    pool.release(conn)
    assert not pool._idle
