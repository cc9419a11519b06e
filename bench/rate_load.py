"""Open-loop load at a constant rate against a loopback predict URL, recording every answer.

Unlike ``loadgen.py`` (closed loop, as fast as possible) this sends one request every
``1/rate`` seconds whatever the answers do, so a slow or failing phase shows up as latency and
errors instead of as fewer requests. Each sample keeps its status, the version that served it
(``X-Cormorant-Version``), its latency and the stage label current when it was sent. Bounded in
rate, connections and time; loopback only (``loadgen.check_loopback``). Used by
``bench/rollout_under_load.py`` and by ``tests/test_rollout.py``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import check_loopback

MAX_RATE = 2_000.0
MAX_SECONDS = 900.0
# Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s) could
# close them under a request: such a race would be the generator's failure, not the server's.
IDLE_LIMIT_S = 2.0


@dataclass(slots=True)
class Sample:
    """One request's outcome."""

    stage: str
    sent: float
    latency: float
    status: int
    version: str | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """No answer, or a 5xx."""
        return self.error is not None or self.status >= 500


@dataclass
class RateLoad:
    """Sends ``rate`` requests per second to ``url`` with ``token`` until stopped."""

    url: str
    token: str
    rate: float
    body: bytes = b'{"input_params": 1}'
    max_connections: int = 128
    stage: str = "start"
    samples: list[Sample] = field(default_factory=list)
    saturated: int = 0
    """Ticks skipped because every connection was busy (the generator's limit, not a failure)."""
    _idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = field(
        default_factory=list
    )
    _busy: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        if not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE}]")
        parts = urlsplit(self.url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        check_loopback(self._host)
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        )
        self._request = head.encode() + self.body

    def stop(self) -> None:
        """End the run after the requests in flight."""
        self._stop.set()

    def count(self, stage: str | None = None) -> int:
        """Answers recorded so far (of ``stage`` only, if given)."""
        return sum(1 for s in self.samples if stage is None or s.stage == stage)

    async def run(self, max_seconds: float = MAX_SECONDS) -> None:
        """Send at the constant rate until ``stop()`` or ``max_seconds``."""
        interval = 1.0 / self.rate
        started = time.perf_counter()
        deadline = started + min(max_seconds, MAX_SECONDS)
        tasks: set[asyncio.Task[None]] = set()
        tick = 0
        while not self._stop.is_set() and time.perf_counter() < deadline:
            due = started + tick * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            if self._busy >= self.max_connections:
                self.saturated += 1
                continue
            task = asyncio.ensure_future(self._one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        for _, _, writer in self._idle:
            writer.close()
        self._idle.clear()

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            since, reader, writer = self._idle.pop()
            if now - since < IDLE_LIMIT_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self._host, self._port)

    async def _one(self) -> None:
        stage = self.stage
        self._busy += 1
        sent = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await self._connection()
            writer.write(self._request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at < 0:
                raise ValueError("response without Content-Length")
            length = int(lower[at + 15 : lower.index(b"\r\n", at)])
            if length:
                await reader.readexactly(length)
            version = None
            at = lower.find(b"x-cormorant-version:")
            if at >= 0:
                version = head[at + 20 : lower.index(b"\r\n", at)].decode().strip()
            latency = time.perf_counter() - sent
            self.samples.append(Sample(stage, sent, latency, status, version))
            if b"connection: close" in lower:
                writer.close()
            else:
                self._idle.append((time.monotonic(), reader, writer))
            writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            latency = time.perf_counter() - sent
            error = f"{type(exc).__name__}: {exc}"
            self.samples.append(Sample(stage, sent, latency, 0, None, error))
        finally:
            self._busy -= 1
            if writer is not None:
                writer.close()


def p99_ms(samples: list[Sample]) -> float:
    """The 99th percentile latency of ``samples``, in ms."""
    latencies = sorted(s.latency for s in samples)
    if not latencies:
        return 0.0
    return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
