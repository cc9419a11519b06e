"""A replica's logging path per prediction, measured alone: ``ReplicaEvents.prediction`` and
the hand-overs, with the prediction spool on and off.

What the worker does for each answered prediction it logs, in this process and without a
server: ``ReplicaEvents.prediction`` (the spool's append when on, the outcome kept for its
pack), and every ``--per-pack`` predictions (2,000: 200 ms at 10,000 predictions/s) a hand-over
that seals the segment and builds the column pack, given to a publisher that acknowledges at
once (so each segment is deleted, as JetStream's ack does). Best of ``--trials`` runs of
``--rows`` predictions of an iris-sized row, in µs per prediction; ``--profile`` prints the
last trial's cProfile. The garbage collector runs as in the worker (``--no-gc`` turns it off,
to tell its share). Prints::

    prediction_logging: 2.03 µs per prediction without the spool, 3.02 with it (+0.99)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from cormorant.common.bus import Pack
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.publishing import ReplicaEvents
from cormorant.worker.settings import WorkerSettings

INPUT = [[5.1, 3.5, 1.4, 0.2]]
OUTPUT = [0]


class AckingPublisher:
    """Takes every pack and acknowledges it at once."""

    pack_bytes = 1024 * 1024

    def publish_pack(
        self, subject: str, pack: Pack, *, on_settled: Callable[[int], None] | None = None
    ) -> bool:
        """Settle the pack's rows now, as an ack would."""
        if on_settled is not None:
            on_settled(pack.count)
        return True


async def trial(spool: Path | None, rows: int, per_pack: int, profile: bool) -> float:
    """µs per logged prediction over ``rows`` predictions."""
    settings = WorkerSettings(
        nats_url="nats://127.0.0.1:4222", endpoint="bench", version="1",
        publish_metrics=False, spool_dir=spool,
    )  # fmt: skip
    events = ReplicaEvents(settings, WorkerMetrics(CollectorRegistry()))
    events._loop = asyncio.get_running_loop()  # as __aenter__ does, without connecting
    events.publisher = AckingPublisher()  # type: ignore[assignment]
    request_ids = [f"{index:032x}" for index in range(rows)]
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.perf_counter_ns()
    for index, request_id in enumerate(request_ids):
        events.prediction(request_id, 1_765_000_000.0 + index, 0.0008, 200, INPUT, OUTPUT,
                          None, None, 30)  # fmt: skip
        if index % per_pack == per_pack - 1:
            events._hand_over()
    events._hand_over()
    elapsed = time.perf_counter_ns() - started
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    if events._spool is not None:
        events._spool.close()
    return elapsed / rows / 1000


async def best(spool: Path | None, args: argparse.Namespace) -> float:
    """The fastest of the trials; the last one profiled when asked."""
    return min([
        await trial(spool, args.rows, args.per_pack, args.profile and last)
        for last in [False] * (args.trials - 1) + [True]
    ])  # fmt: skip


async def run(args: argparse.Namespace) -> None:
    """Measure without, then with, the spool."""
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=args.dir) as name:
        without = await best(None, args)
        with_spool = await best(Path(name), args)
    print(f"prediction_logging: {without:.2f} µs per prediction without the spool, "
          f"{with_spool:.2f} with it ({with_spool - without:+.2f})")  # fmt: skip


def main() -> None:
    """Parse the options and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="predictions per trial")
    parser.add_argument("--trials", type=int, default=3, help="trials; the best one counts")
    parser.add_argument("--per-pack", type=int, default=2000, help="predictions per hand-over")
    parser.add_argument("--dir", type=Path, default=None, help="where the spool goes")
    parser.add_argument("--profile", action="store_true", help="cProfile the last trial")
    parser.add_argument("--no-gc", action="store_true", help="turn the garbage collector off")
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
