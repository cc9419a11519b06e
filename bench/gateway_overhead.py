"""Gateway overhead: the no-op model called directly and through the gateway, same load tool.

One worker (``python -m cormorant.worker`` on ``bench/noop``, ``workers=1 threads=1`` unless
told otherwise) serves both paths; ``python -m cormorant.gateway`` runs in front of it with a
real PostgreSQL (the endpoint token is checked against its SHA-256 there, then cached) and a
real NATS (events, load reports), both started from their wheels. The deployer is not part
of this run: the routing snapshot (``GET /internal/routing``) is served by a tiny HTTP app in
this process, in the contract's shape, naming the one worker as the one ready replica.

The load generator is ``bench/loadgen.py`` for both paths, in its own process, with the same
request (the ``Authorization`` header goes to both, by loadgen's ``--header``; the worker
ignores it).
Rounds alternate direct and gateway so that drift in the machine's speed hits both; at
concurrency 1 the median round of each path is kept, at concurrency 64 the best. Prints::

    gateway_overhead: c=1 p50 +0.62 ms (target <= 1.0), p99 +1.9 ms (target <= 3.0); c=64 ratio 0.52 (target >= 0.45, HAProxy 0.46)
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# Same helpers as the worker bench (this folder is on sys.path when a bench runs).
from worker_overhead import free_port, round_options, stop, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SLUG = "bench"
VERSION = "1"

P50_TARGET_MS = 1.0
P99_TARGET_MS = 3.0
RATIO_TARGET = 0.45
KNATIVE_ACTIVATOR_MS = 2.5  # "adds 2-3 ms"
ISTIO_P90_MS = 2.65
HAPROXY_RATIO = 0.46


def child_env(**extra: str) -> dict[str, str]:
    """The servers' environment: quiet logs, no metric publishing from the worker."""
    env = dict(os.environ)
    env["CORMORANT_LOG_LEVEL"] = "WARNING"
    env["CORMORANT_LOG_JSON"] = "false"
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    env.update(extra)
    return env


@contextmanager
def process(command: Sequence[str], health: str, env: dict[str, str]) -> Iterator[None]:
    """Run a server until the block ends; enter once ``health`` answers 200."""
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        wait_healthy(health, proc)
        yield
    finally:
        stop(proc)


def worker_command(
    port: int, version: str = VERSION, *, workers: int = 1, threads: int = 1
) -> list[str]:
    """The command of a worker of ``version`` of the bench endpoint on ``bench/noop``."""
    return [
        sys.executable, "-m", "cormorant.worker",
        "--source", str(BENCH / "noop"), "--file", "noop.py", "--function", "predict",
        "--endpoint", SLUG, "--version", version, "--port", str(port),
        f"--server=workers={workers}", f"--server=threads={threads}",
    ]  # fmt: skip


def one_replica_route(worker_url: str) -> dict[str, Any]:
    """The bench endpoint's route with ``worker_url`` as its one ready replica."""
    return {
        "slug": SLUG,
        "endpoint_id": str(uuid.uuid4()),
        "kind": "web",
        "status": "running",
        "timeout_s": 30,
        "generation": 1,
        "weights": {VERSION: 100},
        "replicas": [{"id": "r1", "version": VERSION, "url": worker_url, "state": "ready"}],
    }


@contextmanager
def routing_source(route: dict[str, Any]) -> Iterator[str]:
    """Serve the deployer's routing contract for ``route``; yield the base URL."""
    bodies = {
        "/internal/routing": json.dumps({"endpoints": [route]}).encode(),
        f"/internal/routing/{route['slug']}": json.dumps(route).encode(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = bodies.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def gateway_process(
    database_url: str, nats_url: str, routing_url: str, **settings: str
) -> Iterator[str]:
    """Run ``python -m cormorant.gateway`` on a free port with its routing from
    ``routing_url`` (and ``settings`` in its environment); yield its base URL."""
    port = free_port()
    env = child_env(
        CORMORANT_DATABASE_URL=database_url,
        CORMORANT_NATS_URL=nats_url,
        CORMORANT_GATEWAY_PORT=str(port),
        CORMORANT_GATEWAY_GRPC_PORT="0",
        CORMORANT_GATEWAY_DEPLOYER_URL=routing_url,
        **settings,
    )
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "cormorant.gateway"], f"{url}/healthz", env):
        yield url


@dataclass
class Platform:
    """NATS and a migrated PostgreSQL holding the bench endpoint and its token."""

    nats_url: str
    database_url: str
    token: str
    pids: dict[str, list[int]]
    """The servers' processes, by name."""


@contextmanager
def platform(prefix: str) -> Iterator[Platform]:
    """Start NATS and PostgreSQL from their wheels in a temporary folder named ``prefix``...,
    prepare the database; stop both when the block ends."""
    from cormorant.devstack.servers import NatsServer, PostgresServer

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        data = Path(tmp)
        nats = NatsServer(data / "nats")
        postgres = PostgresServer(data / "pg", durable=False)
        nats.start()
        postgres.start()
        try:
            database_url = postgres.create_database("bench")
            token = asyncio.run(prepare_database(database_url))
            pids = {"nats-server": [nats.pid or 0], "postgres": [postgres.pid or 0]}
            yield Platform(nats.url, database_url, token, pids)
        finally:
            postgres.stop()
            nats.stop()


async def prepare_database(url: str) -> str:
    """Migrate, create the endpoint and its token (hash only); return the token."""
    from cormorant.common.auth import generate_token, hash_token
    from cormorant.common.db import create_engine, session_factory, upgrade
    from cormorant.common.db.models import PREFIX_LENGTH, Endpoint, EndpointKind, EndpointToken

    await upgrade(url)
    engine = create_engine(url)
    token = generate_token()
    try:
        async with session_factory(engine)() as session, session.begin():
            endpoint = Endpoint(
                id=uuid.uuid4(), slug=SLUG, name=SLUG, kind=EndpointKind.WEB, spec={}
            )
            session.add(endpoint)
            await session.flush()
            session.add(
                EndpointToken(
                    endpoint_id=endpoint.id,
                    token_hash=hash_token(token),
                    prefix=token[:PREFIX_LENGTH],
                )
            )
    finally:
        await engine.dispose()
    return token


def load(url: str, token: str, connections: int, duration: float) -> dict[str, Any]:
    """One run of bench/loadgen.py, carrying the endpoint's token, in its own process."""
    out = subprocess.run(
        [
            sys.executable, str(BENCH / "loadgen.py"), url,
            "--header", f"Authorization: Bearer {token}",
            "--connections", str(connections), "--duration", str(duration),
        ],
        check=True, capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] or result["non_2xx"] or not result["requests"]:
        raise RuntimeError(f"failed requests against {url}: {result}")
    return result


def main() -> int:
    """Start everything, run the rounds, print the figures against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="predict threads per worker")
    round_options(parser, rounds=3)
    parser.add_argument("--connections", type=int, default=64, help="the throughput run's")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    with platform("gateway-bench-") as servers:
        figures = measure(args, servers.database_url, servers.nats_url, servers.token)
    return report(args, figures)


def measure(
    args: argparse.Namespace, database_url: str, nats_url: str, token: str
) -> dict[str, Any]:
    """Run the worker and the gateway; alternate direct and gateway rounds at c=1 and c=64."""
    worker_port = free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    worker = worker_command(worker_port, workers=args.workers, threads=args.threads)
    direct = f"{worker_url}/predict"
    runs: dict[str, list[dict[str, Any]]] = {
        "direct_c1": [], "gateway_c1": [], "direct_cN": [], "gateway_cN": [],
    }  # fmt: skip
    with ExitStack() as stack:
        stack.enter_context(process(worker, f"{worker_url}/healthz", child_env()))
        source = stack.enter_context(routing_source(one_replica_route(worker_url)))
        gateway_url = stack.enter_context(gateway_process(database_url, nats_url, source))
        through = f"{gateway_url}/api/v1/endpoints/{SLUG}/predict"
        for url in (direct, through):
            load(url, token, 8, args.warmup)
        for _ in range(args.rounds):
            for kind, url in (("direct", direct), ("gateway", through)):
                for label, connections in (("c1", 1), ("cN", args.connections)):
                    result = load(url, token, connections, args.duration)
                    runs[f"{kind}_{label}"].append(result)
                    print(f"  {kind} {label}: {json.dumps(result)}", file=sys.stderr)
    return runs


def report(args: argparse.Namespace, runs: dict[str, Any]) -> int:
    """Print the figures, write bench/results/gateway_overhead.json, judge the targets."""

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[f"{kind}_c1"])

    p50 = median("gateway", "p50_ms") - median("direct", "p50_ms")
    p99 = median("gateway", "p99_ms") - median("direct", "p99_ms")
    direct_rps = max(r["rps"] for r in runs["direct_cN"])
    gateway_rps = max(r["rps"] for r in runs["gateway_cN"])
    ratio = gateway_rps / direct_rps
    ok = p50 <= P50_TARGET_MS and p99 <= P99_TARGET_MS and ratio >= RATIO_TARGET
    verdict = "" if ok else " BELOW TARGET"
    print(
        f"gateway_overhead: c=1 p50 {p50:+.2f} ms (target <= {P50_TARGET_MS}), "
        f"p99 {p99:+.2f} ms (target <= {P99_TARGET_MS}); c={args.connections} ratio "
        f"{ratio:.2f} (target >= {RATIO_TARGET}, HAProxy {HAPROXY_RATIO}){verdict}"
    )
    print(
        f"  against the anchors: p50 added is {p50 / KNATIVE_ACTIVATOR_MS:.2f}x Knative's "
        f"activator ({KNATIVE_ACTIVATOR_MS} ms), p99 added is {p99 / ISTIO_P90_MS:.2f}x "
        f"Istio's sidecars at p90 ({ISTIO_P90_MS} ms), throughput ratio is "
        f"{ratio / HAPROXY_RATIO:.2f}x HAProxy's ({HAPROXY_RATIO}); "
        f"{gateway_rps:.0f} vs {direct_rps:.0f} req/s",
        flush=True,
    )
    summary = {
        "p50_added_ms": p50,
        "p99_added_ms": p99,
        "gateway_rps": gateway_rps,
        "direct_rps": direct_rps,
        "ratio": ratio,
        "runs": runs,
        "settings": vars(args),
    }
    results = BENCH / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "gateway_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
