"""Stream model swap at full scale: 100,000 unique ids, a new version swapped in mid-stream.

One run of the issue's acceptance scenario through the platform as a user drives it: a local
stack (``cormorant up`` on free ports, its own data directory), a tansu broker, a 3-partition
input topic, a stream endpoint with ``--replicas`` replicas created through the gateway, and a
new version created and rolled out at 100% (``POST .../versions``, ``POST .../rollout``) while
the messages flow (40% before the swap, the rest during and after it, fed at a steady pace). The anchor is the issue's: 0 missing and 0
duplicate ids. Also printed: how long the swap took and the longest time the output stopped
growing while it ran (prediction logging on, as in production). Prints e.g.::

    stream_swap: 100,000 ids, 0 missing, 0 duplicate (target 0/0); swap v1→v2 took 18.0 s, longest output stall during it 5.2 s; outputs by version v1: 60,000, v2: 40,000
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from cormorant.devstack.servers import KafkaBroker
from cormorant.devstack.testing.running import running_stack
from cormorant.kafka_bridge.testing import (
    create_topics,
    high_watermarks,
    message,
    produce,
    read_topic,
)
from cormorant.sdk import Client
from cormorant.sdk.streams import Streams

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "models" / "stream"
CHUNK = 1_000


async def output_size(bootstrap: str, topic: str) -> int:
    """Records on ``topic``."""
    return sum((await high_watermarks(bootstrap, topic)).values())


async def run(args: argparse.Namespace, bootstrap: str, client: Client) -> str:
    """The scenario; the summary line."""
    tag = uuid.uuid4().hex[:8]
    source, output = f"swap-in-{tag}", f"swap-out-{tag}"
    await create_topics(bootstrap, {source: 3, output: 3})
    streams = Streams(client)
    created = await asyncio.to_thread(
        streams.create, "swapbench", MODEL, bootstrap_servers=bootstrap, input_topics=[source],
        output_topic=output, min_replicas=args.replicas, max_replicas=args.replicas,
    )  # fmt: skip
    slug = created["slug"]
    deadline = time.monotonic() + 120
    while client.endpoints.get(slug)["replicas"]["ready"] < args.replicas:
        if time.monotonic() > deadline:
            raise SystemExit(f"{slug}: replicas not ready in 120 s")
        await asyncio.sleep(0.5)

    total, sent = args.messages, 0
    two_fifths = asyncio.Event()

    async def feed() -> None:
        nonlocal sent
        while sent < total:
            upto = min(sent + CHUNK, total)
            await produce(bootstrap, source, (message(i) for i in range(sent, upto)))
            sent = upto
            if sent >= total * 0.4:
                two_fifths.set()
            await asyncio.sleep(args.pause)

    # Version 2 is stored and checked before the feed (it starts nothing); the rollout at 40%
    # is the handover being measured.
    created = await asyncio.to_thread(client.rollouts.create_version, slug, MODEL)
    feeding = asyncio.create_task(feed())
    await two_fifths.wait()
    swapping = asyncio.create_task(
        asyncio.to_thread(streams.swap, slug, version=int(created["version"]))
    )
    swap_started = time.monotonic()
    # The longest time the output did not grow while the swap ran and input was waiting.
    stall, last_size, last_growth = 0.0, await output_size(bootstrap, output), swap_started
    while not swapping.done():
        await asyncio.sleep(0.2)
        size, now = await output_size(bootstrap, output), time.monotonic()
        if size > last_size or size >= sent:
            last_size, last_growth = size, now
        stall = max(stall, now - last_growth)
    swapped = await swapping
    swap_seconds = time.monotonic() - swap_started
    await feeding

    deadline = time.monotonic() + args.timeout
    while await output_size(bootstrap, output) < total:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    seen = Counter(json.loads(r.value or b"{}")["id"] for r in await read_topic(bootstrap, output))
    versions = Counter(r.headers["cormorant-version"] for r in await read_topic(bootstrap, output))
    missing = total - len(set(seen) & set(range(total)))
    duplicates = sum(count - 1 for count in seen.values() if count > 1)
    client.endpoints.delete(slug)
    by_version = ", ".join(f"v{k.decode()}: {v:,}" for k, v in sorted(versions.items()))
    return (
        f"stream_swap: {total:,} ids, {missing} missing, {duplicates} duplicate (target 0/0); "
        f"swap v{swapped['previous_version']}→v{swapped['version']} took {swap_seconds:.1f} s, "
        f"longest output stall during it {stall:.1f} s; outputs by version {by_version}"
    )


def main() -> None:
    """Run once and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between chunks")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cormorant-swap-") as tmp:
        data_dir = Path(tmp) / "data"
        broker = KafkaBroker(Path(tmp))
        broker.start()
        settings = {"CORMORANT_LOG_LEVEL": "WARNING"}
        try:
            with (
                running_stack(data_dir, settings, cwd=ROOT, timeout=300) as stack,
                stack.client() as client,
            ):
                print(asyncio.run(run(args, broker.bootstrap_servers, client)), flush=True)
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
