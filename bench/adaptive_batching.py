"""Adaptive batching: throughput and p99 at concurrency 32, added latency at concurrency 1.

Two workers serve the same batch-capable model (``bench/fixed_cost``: ~1 ms of CPU per call
plus 20 µs per row, GIL held), one with adaptive batching
(``CORMORANT_PREDICT_BATCH_MAX_SIZE=32``, ``..._MAX_WAIT_MS=2``), one without; both 1 process
x 4 predict threads. The load generator (``bench/loadgen.py``, its own process) posts the same
one-row Open Inference Protocol body to each worker's ``/predict/rows``. Rounds alternate the
two workers; the best round of each is kept. Prints e.g.::

    adaptive_batching: c=32 throughput 3.10x (target >= 2), p99 0.45x (target <= 1.5);
    c=1 added p50 0.12 ms (target <= max_wait 2 ms + 1 ms)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from worker_overhead import BENCH, ROOT, child_env, free_port, serving

MAX_SIZE = 32
MAX_WAIT_MS = 2.0
BODY = json.dumps({"inputs": [{"name": "x", "rows": [[1.0, 2.0, 3.0, 4.0]]}]})


def load(url: str, connections: int, duration: float) -> dict[str, Any]:
    """One run of the load generator in its own process."""
    out = subprocess.run(
        [
            sys.executable, str(BENCH / "loadgen.py"), url, "--body", BODY,
            "--connections", str(connections), "--duration", str(duration),
        ],
        check=True, capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"] or result["non_2xx"] or not result["requests"]:
        raise RuntimeError(f"failed requests: {result}")
    return result


def measure(batching: bool, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Start one worker, warm it up, measure at concurrency 32 and 1."""
    port = free_port()
    env = ["--env", "CORMORANT_PREDICT_BATCH=true"]
    if batching:
        env += ["--env", f"CORMORANT_PREDICT_BATCH_MAX_SIZE={MAX_SIZE}",
                "--env", f"CORMORANT_PREDICT_BATCH_MAX_WAIT_MS={MAX_WAIT_MS:g}"]  # fmt: skip
    command = [
        sys.executable, "-m", "cormorant.worker", "--source", str(BENCH / "fixed_cost"),
        "--file", "model.py", "--port", str(port), "--server=workers=1",
        f"--server=threads={args.threads}", *env,
    ]  # fmt: skip
    with serving(command, port) as predict_url:
        url = predict_url + "/rows"
        load(url, args.connections, args.warmup)
        busy = load(url, args.connections, args.duration)
        single = load(url, 1, args.duration)
    return {"busy": busy, "single": single}


def main() -> int:
    """Run the rounds and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4, help="predict threads per worker")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for kind in ("off", "on"):
            result = measure(kind == "on", args)
            runs[kind].append(result)
            print(f"  batching {kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    best = {
        kind: {
            "busy": max((r["busy"] for r in rounds), key=lambda r: r["rps"]),
            "single": min((r["single"] for r in rounds), key=lambda r: r["p50_ms"]),
        }
        for kind, rounds in runs.items()
    }
    throughput = best["on"]["busy"]["rps"] / best["off"]["busy"]["rps"]
    p99 = best["on"]["busy"]["p99_ms"] / best["off"]["busy"]["p99_ms"]
    added = best["on"]["single"]["p50_ms"] - best["off"]["single"]["p50_ms"]
    ok = throughput >= 2 and p99 <= 1.5 and added <= MAX_WAIT_MS + 1
    print(
        f"adaptive_batching: c={args.connections} throughput {throughput:.2f}x "
        f"({best['on']['busy']['rps']:.0f} vs {best['off']['busy']['rps']:.0f} req/s, target "
        f">= 2), p99 {p99:.2f}x ({best['on']['busy']['p99_ms']:.1f} vs "
        f"{best['off']['busy']['p99_ms']:.1f} ms, target <= 1.5); c=1 added p50 {added:.2f} ms "
        f"(target <= max_wait {MAX_WAIT_MS:g} ms + 1 ms){'' if ok else ' BELOW TARGET'}",
        flush=True,
    )
    results = Path(ROOT) / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary = {"throughput_ratio": throughput, "p99_ratio": p99, "added_p50_ms": added,
               "best": best, "runs": runs, "settings": vars(args)}  # fmt: skip
    (results / "adaptive_batching.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
