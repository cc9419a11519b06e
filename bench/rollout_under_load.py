"""Model updates under load: failures, wrong-version answers and p99 during a rollout sequence.

Starts a local stack of its own (``cormorant up --no-example`` on free ports, a temporary data
dir), deploys a tiny model (1 replica, ``workers=1``), then drives it through the gateway with
``bench/rate_load.py`` at a constant 200 requests/s: first ``--rest`` seconds at rest (the
anchor), then the issue's sequence deploy v2 → 10 % → 50 % → promote → deploy v3 → 25 % →
rollback, and the rollout of a version whose model cannot import (refused, never routed),
each stage held ``--hold`` seconds. Prints::

    rollout_under_load: 0 failed of 9,812, 0 served by the broken version; p99 sequence 9.1 ms / rest 7.0 ms = 1.30 (target <= 1.5)

Bounded: at most ``rate_load.MAX_SECONDS`` of load; traffic to 127.0.0.1 only.
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from rate_load import RateLoad, p99_ms

from cormorant.devstack.testing.models import model_dir
from cormorant.devstack.testing.running import running_stack
from cormorant.sdk import Client

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 1.5


def answer(value: str) -> str:
    """A model that answers ``value``."""
    return f"def predict(x):\n    return {value!r}\n"


async def sequence(client: Client, url: str, token: str, work: Path, args: Any) -> dict[str, Any]:
    """Run the load and the sequence; the samples' summary."""
    rollouts = client.rollouts
    load = RateLoad(url, token, args.rate)
    runner = asyncio.ensure_future(load.run())

    async def stage(name: str, fn: Any = None, *fn_args: Any) -> Any:
        result = await asyncio.to_thread(fn, *fn_args) if fn is not None else None
        load.stage = name
        await asyncio.sleep(args.hold)
        return result

    try:
        load.stage = "warm-up"
        await asyncio.sleep(2.0)
        load.stage = "rest"
        await asyncio.sleep(args.rest)
        source = model_dir(work, "v2", answer("2"))
        await stage("v2 created", rollouts.create_version, "bench", source)
        await stage("10%", rollouts.rollout, "bench", "2", 10)
        await stage("50%", rollouts.rollout, "bench", "2", 50)
        await stage("promoted", rollouts.promote, "bench")
        source = model_dir(work, "v3", answer("3"))
        await stage("v3 created", rollouts.create_version, "bench", source)
        await stage("25%", rollouts.rollout, "bench", "3", 25)
        await stage("rolled back", rollouts.rollback, "bench")
        broken = model_dir(work, "v4", 'raise RuntimeError("broken")\n' + answer("4"))
        await stage("v4 created", rollouts.create_version, "bench", broken)
        try:
            await asyncio.to_thread(rollouts.rollout, "bench", "4", 10)
            refused = False
        except Exception:
            refused = True
        await stage("after broken")
    finally:
        load.stop()
        await runner
    rest = [s for s in load.samples if s.stage == "rest" and not s.failed]
    during = [s for s in load.samples if s.stage not in ("warm-up", "rest") and not s.failed]
    return {
        "requests": len(load.samples),
        "failed": sum(1 for s in load.samples if s.failed),
        "errors": Counter(s.error or str(s.status) for s in load.samples if s.failed),
        "broken_served": sum(1 for s in load.samples if s.version == "4"),
        "versions": Counter(s.version for s in load.samples),
        "broken_refused": refused,
        "saturated": load.saturated,
        "p99_rest_ms": p99_ms(rest),
        "p99_sequence_ms": p99_ms(during),
        "stages": {
            name: dict(Counter(s.version for s in load.samples if s.stage == name))
            for name in dict.fromkeys(s.stage for s in load.samples)
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Start a stack, run the sequence under load, print the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s")
    parser.add_argument("--rest", type=float, default=15.0, help="seconds at rest (the anchor)")
    parser.add_argument("--hold", type=float, default=8.0, help="seconds per stage")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cormorant-rollout-bench-") as tmp:
        work = Path(tmp)
        with running_stack(work / "data", cwd=ROOT) as stack:
            url = stack.url
            client = stack.client()
            created = client.endpoints.create(
                "bench", str(model_dir(work, "v1", answer("1"))), server={"workers": 1}
            )
            client.endpoints.wait_until_running(created["slug"])
            predict = f"{url}/api/v1/endpoints/{created['slug']}/predict"
            summary = asyncio.run(sequence(client, predict, created["token"], work, args))
    print(json.dumps(summary, default=str), file=sys.stderr)
    ratio = summary["p99_sequence_ms"] / max(summary["p99_rest_ms"], 1e-9)
    misses = summary["failed"] or summary["broken_served"] or ratio > RATIO_TARGET
    print(
        f"rollout_under_load: {summary['failed']} failed of {summary['requests']:,}, "
        f"{summary['broken_served']} served by the broken version; p99 sequence "
        f"{summary['p99_sequence_ms']:.1f} ms / rest {summary['p99_rest_ms']:.1f} ms = "
        f"{ratio:.2f} (target <= {RATIO_TARGET})" + (" MISSED" if misses else ""),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
