"""Shadow traffic: what mirroring every live request to a shadow version costs the caller.

Two workers on ``bench/noop`` (``workers=1 threads=1``): the live version 1 and the shadow
version 2, each its own process. Two gateways (``python -m cormorant.gateway``) in front of
them with a real PostgreSQL and a real NATS, both from their wheels; each gets its routing
snapshot from a tiny HTTP app in this process in the contract's shape: one routes the live
worker with no shadow (0 %), the other the same worker with version 2 shadowing 100 % of the
requests (mirrored after answering, the shadow's answers published to the prediction log
stream). Same load tool for both (``bench/loadgen.py`` through ``gateway_overhead``'s header
shim), rounds alternating 0 % and 100 % so that drift in the machine's speed hits both; the
median round of each is kept. Two loads: closed loop (``loadgen``, c=1 and c=``--connections``,
as fast as the path answers: every mirrored request's CPU competes with the next live one) and
open loop (``rate_load.RateLoad`` at ``--rate`` requests/s, the production-like case where the
machine has idle time to absorb the shadow's work). On 127.0.0.1, bounded (``--rounds`` ×
``--duration``). Prints::

    shadow_traffic (100 % mirrored vs 0 %): c=1 p50 0.84 vs 0.80 ms (ratio 1.05), p99 ...

The anchor is the same gateway without shadow traffic: a ratio of 1.0 means the caller does
not see the mirroring at all. On a 2-core machine the shadow worker competes with the live path
for CPU at 100 %, which is part of the honest figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

# Same helpers as the gateway bench (this folder is on sys.path when a bench runs).
from gateway_overhead import (
    SLUG,
    child_env,
    gateway_process,
    load,
    platform,
    process,
    routing_source,
    worker_command,
)
from rate_load import RateLoad
from worker_overhead import free_port, round_options

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
P50_RATIO_TARGET = 1.25
"""The caller's p50 at a steady rate with every request mirrored, at most this many times the
p50 without."""


def measure(
    args: argparse.Namespace, database_url: str, nats_url: str, token: str
) -> dict[str, list[dict[str, Any]]]:
    """Start the workers and both gateways; alternate 0 % and 100 % rounds at c=1 and c=N."""
    live_port, shadow_port = free_port(), free_port()
    live_url, shadow_url = f"http://127.0.0.1:{live_port}", f"http://127.0.0.1:{shadow_port}"
    endpoint_id = str(uuid.uuid4())
    replicas = [
        {"id": "live", "version": "1", "url": live_url, "state": "ready"},
        {"id": "shadow", "version": "2", "url": shadow_url, "state": "ready"},
    ]
    base = {
        "slug": SLUG, "endpoint_id": endpoint_id, "kind": "web", "status": "running",
        "timeout_s": 30, "generation": 1, "weights": {"1": 100}, "replicas": replicas,
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {
        f"{percent}_{label}": [] for percent in ("0", "100") for label in ("c1", "cN", "rate")
    }
    with ExitStack() as stack:
        for version, port in (("1", live_port), ("2", shadow_port)):
            health = f"http://127.0.0.1:{port}/healthz"
            stack.enter_context(process(worker_command(port, version), health, child_env()))
        urls = {}
        for percent, shadow in (("0", None), ("100", {"version": "2", "percent": 100})):
            source = stack.enter_context(routing_source({**base, "shadow": shadow}))
            gateway_url = stack.enter_context(
                gateway_process(
                    database_url, nats_url, source, CORMORANT_GATEWAY_INSTANCE_ID=f"bench-{percent}"
                )
            )
            urls[percent] = f"{gateway_url}/api/v1/endpoints/{SLUG}/predict"
        for url in urls.values():
            load(url, token, 8, args.warmup)
        for _ in range(args.rounds):
            for percent, url in urls.items():
                for label, connections in (("c1", 1), ("cN", args.connections)):
                    result = load(url, token, connections, args.duration)
                    runs[f"{percent}_{label}"].append(result)
                    print(f"  shadow {percent}% {label}: {json.dumps(result)}", file=sys.stderr)
                result = open_loop(url, token, args.rate, args.duration)
                runs[f"{percent}_rate"].append(result)
                print(f"  shadow {percent}% rate: {json.dumps(result)}", file=sys.stderr)
    return runs


def open_loop(url: str, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop run at ``rate`` requests/s: p50, p99 and the requests per second."""
    generator = RateLoad(url, token, rate)
    asyncio.run(generator.run(max_seconds=seconds))
    latencies = sorted(s.latency * 1000 for s in generator.samples)
    failed = [s for s in generator.samples if s.failed]
    if failed or not latencies:
        raise RuntimeError(f"failed requests against {url}: {failed[:3]}")
    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def report(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> int:
    """Print the figures as ratios, write bench/results/shadow_traffic.json."""

    def median(key: str, metric: str) -> float:
        return statistics.median(r[metric] for r in runs[key])

    parts = []
    figures: dict[str, float] = {}
    for label, name in (
        ("c1", "c=1"),
        ("cN", f"c={args.connections}"),
        ("rate", f"{args.rate:g} req/s"),
    ):
        line = []
        for metric in ("p50_ms", "p99_ms"):
            off, on = median(f"0_{label}", metric), median(f"100_{label}", metric)
            figures[f"{label}_{metric}_0"], figures[f"{label}_{metric}_100"] = off, on
            figures[f"{label}_{metric}_ratio"] = on / off
            line.append(f"{metric[:3]} {on:.2f} vs {off:.2f} ms (ratio {on / off:.2f})")
        rps_off, rps_on = median(f"0_{label}", "rps"), median(f"100_{label}", "rps")
        figures[f"{label}_rps_ratio"] = rps_on / rps_off
        throughput = f", req/s ratio {rps_on / rps_off:.2f}" if label != "rate" else ""
        parts.append(f"{name} " + ", ".join(line) + throughput)
    ok = figures["rate_p50_ms_ratio"] <= P50_RATIO_TARGET
    verdict = "" if ok else " ABOVE TARGET"
    print(
        "shadow_traffic (100 % mirrored vs 0 %): " + "; ".join(parts)
        + f" (target: open-loop p50 ratio <= {P50_RATIO_TARGET}){verdict}",
        flush=True,
    )  # fmt: skip
    results = BENCH / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary = {"figures": figures, "runs": runs, "settings": vars(args)}
    (results / "shadow_traffic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and not ok else 0


def main() -> int:
    """Start everything, run the rounds, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    round_options(parser, duration=3.0, rounds=3)
    parser.add_argument("--connections", type=int, default=8, help="the loaded run's")
    parser.add_argument("--rate", type=float, default=200.0, help="the open-loop run's req/s")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    args = parser.parse_args()

    with platform("shadow-bench-") as servers:
        runs = measure(args, servers.database_url, servers.nats_url, servers.token)
    return report(args, runs)


if __name__ == "__main__":
    sys.exit(main())
