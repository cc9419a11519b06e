"""A lean HTTP/1.1 keep-alive client for the one hop the gateway makes per prediction.

httpx spends about 0.25 ms of CPU per request in its own layers (httpcore's connection state,
h11's pure-Python parsing, its request and response models), more than the whole gateway may
add; this client is an asyncio protocol over uvloop with llhttp (``httptools``, which uvicorn
already uses) parsing the answer, and a LIFO pool of keep-alive connections per replica.
It speaks only what a worker needs: one request with a known length, an answer with a
``Content-Length`` or chunked body, read as it arrives.

Failures are split by whether the replica may have seen the request: ``ConnectFailed`` means
nothing was sent (another replica may be tried), ``UpstreamBroken`` and ``UpstreamTimedOut``
come after the request was written, when retrying could run a prediction twice.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from typing import cast

import httptools

# Buffered answer bytes past which reading from the replica pauses until the client caught up.
_HIGH_WATER = 1 << 20


class ConnectFailed(Exception):
    """No connection to the replica could be made; nothing was sent."""


class UpstreamBroken(Exception):
    """The replica closed the connection or sent something unreadable after the request."""


class UpstreamTimedOut(Exception):
    """The replica did not answer in time."""


class Connection(asyncio.Protocol):
    """One keep-alive connection to a replica, carrying one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.busy = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; its callbacks below collect the answer."""
        if not self.busy:
            # Nothing is owed on an idle connection: whatever this is, the connection is spent.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"unreadable answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        """Let the transport close: a replica that half-closes is done with the connection."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the exchange in progress, if any; drop the connection from the idle pool."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.busy:
            if not self.complete:
                reason = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
                self._fail(UpstreamBroken(reason))
        else:
            self._pool.forget(self)

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect one header of the answer."""
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is in: status and keep-alive are known."""
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        """Buffer a piece of the body for the reader."""
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        """The whole answer is in."""
        self.complete = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    # The exchange

    def send(self, head: bytes, body: bytes) -> None:
        """Write the request (head and body) in one go."""
        assert self._transport is not None
        self._transport.writelines((head, body))

    def arm(self, timeout: float) -> None:
        """Fail the exchange with ``UpstreamTimedOut`` unless it progresses within ``timeout``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(timeout, self._expire)

    def disarm(self) -> None:
        """Stop the timer set by ``arm``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def read_head(self) -> None:
        """Wait for the status and headers of the answer."""
        while not self.head_done:
            await self._wait()

    def take(self) -> bytes:
        """Every body byte buffered now (possibly none)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def read(self) -> bytes | None:
        """The next body bytes as they arrive; ``None`` once the answer is complete."""
        while True:
            if self._chunks:
                return self.take()
            if self.complete:
                return None
            await self._wait()

    def close(self) -> None:
        """Close the connection now; an exchange in progress fails."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def recycle(self) -> None:
        """Forget the finished exchange so the connection can carry the next one."""
        self._reset()

    def _wait(self) -> asyncio.Future[None]:
        if self._error is not None:
            raise self._error
        waiter = self._loop.create_future()
        self._waiter = waiter
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc)

    def _expire(self) -> None:
        self._timer = None
        if not self.complete:
            self._fail(UpstreamTimedOut())
            # The replica may still be computing; closing tells it nobody waits for the answer.
            self.close()


class Pool:
    """Keep-alive connections to one replica, most recently used first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool = False,
        idle_s: float = 1.0,
        max_idle: int = 256,
        connect_timeout: float = 2.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self._ssl: ssl_module.SSLContext | None = (
            ssl_module.create_default_context() if tls else None
        )
        self._idle_s = idle_s
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self.closed = False

    async def acquire(self) -> Connection:
        """A connection ready for one exchange: an idle one, or a new one."""
        idle = self._idle
        if idle:
            oldest_usable = self.loop.time() - self._idle_s
            while idle:
                conn = idle.pop()
                # Past idle_s the worker may be closing it: a write then could be lost
                # after the worker saw part of it, which must never be retried.
                if conn.closed or conn.idle_since < oldest_usable:
                    conn.close()
                    continue
                conn.busy = True
                return conn
        return await self._connect()

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: Connection(self), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError as exc:
            raise ConnectFailed(f"no connection within {self._connect_timeout:g} s") from exc
        except OSError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from exc
        protocol.busy = True
        return protocol

    def release(self, conn: Connection) -> None:
        """Hand back a connection after its exchange; only complete, clean ones are kept."""
        conn.busy = False
        conn.disarm()
        if (
            conn.complete
            and conn.keep_alive
            and not conn.closed
            and not self.closed
            and len(self._idle) < self._max_idle
        ):
            conn.recycle()
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: Connection) -> None:
        """Drop an idle connection the replica closed."""
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        """Close the idle connections; busy ones close when released."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
