"""A small HTTP/1.1 keep-alive load generator for loopback servers, bounded in count and time.

Each connection sends one request, reads the whole response, and sends the next, until the
duration or the request budget runs out. It refuses any host that is not loopback. Run it in
its own process (``python bench/loadgen.py URL ...``); it prints one JSON line of results,
including its own CPU use so a run can tell whether the generator was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

MAX_DURATION = 120.0
MAX_CONNECTIONS = 512
MAX_REQUESTS = 5_000_000


@dataclass(slots=True)
class Result:
    """What one load run measured."""

    requests: int
    errors: int
    non_2xx: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_percent: float


def check_loopback(host: str) -> None:
    """Refuse any target that is not on this machine's loopback interface."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SystemExit(f"loadgen: cannot resolve {host!r}: {exc}") from exc
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise SystemExit(f"loadgen: {host!r} is not a loopback address; refusing")


def build_request(
    host: str, port: int, path: str, body: bytes, headers: Sequence[str] = ()
) -> bytes:
    """The raw bytes of one POST request with a JSON body (and ``headers``, "Name: value")."""
    extra = "".join(f"{header}\r\n" for header in headers)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    counts: dict[str, int],
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        counts["errors"] += 1
        return
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            sent = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at < 0:
                raise ValueError("response without Content-Length")
            length = int(lower[at + 15 : lower.index(b"\r\n", at)])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if not 200 <= status < 300:
                counts["non_2xx"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError):
        counts["errors"] += 1
    finally:
        writer.close()


async def run(
    url: str,
    body: bytes,
    *,
    connections: int,
    duration: float,
    max_requests: int,
    headers: Sequence[str] = (),
) -> Result:
    """Drive ``url`` with ``connections`` keep-alive connections for ``duration`` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    check_loopback(host)
    request = build_request(host, port, parts.path or "/", body, headers)
    latencies: list[float] = []
    counts = {"errors": 0, "non_2xx": 0}
    budget = [max_requests]
    cpu_start = time.process_time()
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(
        *(
            _connection(host, port, request, deadline, budget, latencies, counts)
            for _ in range(connections)
        )
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_start
    latencies.sort()

    def quantile(q: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return Result(
        requests=len(latencies),
        errors=counts["errors"],
        non_2xx=counts["non_2xx"],
        seconds=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(quantile(0.5), 3),
        p99_ms=round(quantile(0.99), 3),
        cpu_percent=round(100 * cpu / elapsed, 1),
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the bounds, run once, print the result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/predict (loopback only)")
    parser.add_argument("--body", default='{"input_params": 1}', help="JSON request body")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument(
        "--header", action="append", default=[], help='an extra request header, "Name: value"'
    )
    args = parser.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION}]")
    if not 0 < args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be in (0, {MAX_CONNECTIONS}]")
    if not 0 < args.max_requests <= MAX_REQUESTS:
        parser.error(f"--max-requests must be in (0, {MAX_REQUESTS}]")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run(
            args.url,
            args.body.encode(),
            connections=args.connections,
            duration=args.duration,
            max_requests=args.max_requests,
            headers=args.header,
        )
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
