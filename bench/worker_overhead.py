"""Worker overhead: req/s of the worker's ``/predict`` against a bare Starlette app, same model.

Both servers run the no-op model (``bench/noop``) under the same gunicorn + uvicorn-worker
settings (worker processes, predict threads), and are driven by the same load generator
(``bench/loadgen.py``) in its own process. Rounds alternate worker and bare so drift in the
machine's speed hits both; the best round of each is kept. One worker process by default:
with several, each keep-alive connection stays with whichever process accepted it first, so
the split (and the figure) varies from run to run, and on two cores the load generator needs
the second one. Prints e.g.::

    worker_overhead: worker 5234 req/s, bare 5810 req/s, ratio 0.90 (target >= 0.80)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cormorant.common.internal import REPLICA_KEY_HEADER, REPLICA_KEY_VARIABLE
from cormorant.common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TARGET = 0.8
BENCH_KEY = "cmr_bench-replica-key-0123456789abcdef0123456789abcdef"
"""With ``--replica-key``: the worker's key, carried by every request."""
SRC_PATHS = [ROOT / "libs/common/src", ROOT / "libs/sdk/src", ROOT / "services/worker/src"]


def round_options(
    parser: argparse.ArgumentParser, *, duration: float = 5.0, rounds: int = 2
) -> None:
    """The options every bench of rounds takes: ``--duration``, ``--warmup``, ``--rounds``."""
    parser.add_argument("--duration", type=float, default=duration, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=rounds)


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, SIGKILL after ``timeout`` s; return once the process exited."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def child_env() -> dict[str, str]:
    """The environment of the servers: quiet logs, no NATS, our sources importable."""
    env = dict(os.environ)
    paths = [str(p) for p in SRC_PATHS] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["CORMORANT_LOG_LEVEL"] = "WARNING"
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    return env


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail if the server exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not healthy within {timeout} s")


@contextmanager
def serving(command: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run a server command; yield its predict URL once healthy; stop it afterwards."""
    proc = subprocess.Popen(command, env=child_env() | (env or {}), cwd=ROOT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        yield f"http://127.0.0.1:{port}/predict"
    finally:
        stop(proc)


def load(url: str, args: argparse.Namespace, duration: float) -> dict[str, Any]:
    """One run of the load generator in its own process."""
    out = subprocess.run(
        [
            sys.executable, str(BENCH / "loadgen.py"), url,
            "--connections", str(args.connections), "--duration", str(duration),
            *(["--header", f"{REPLICA_KEY_HEADER}: {BENCH_KEY}"] if args.replica_key else []),
        ],
        check=True, capture_output=True, text=True, env=child_env(),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Start one server (worker or bare), warm it up, and measure it."""
    port = free_port()
    server = [f"--server=workers={args.workers}", f"--server=threads={args.threads}"]
    model = ["--source", str(BENCH / "noop"), "--file", "noop.py", "--function", "predict"]
    if kind == "worker":
        command = [sys.executable, "-m", "cormorant.worker", *model, "--port", str(port), *server]
    else:
        command = [sys.executable, str(BENCH / "bare_app.py"), *model, "--port", str(port), *server]
    with serving(
        command, port, {REPLICA_KEY_VARIABLE: BENCH_KEY} if args.replica_key else {}
    ) as url:
        load(url, args, args.warmup)
        result = load(url, args, args.duration)
    if result["errors"] or result["non_2xx"] or not result["requests"]:
        raise RuntimeError(f"{kind}: failed requests: {result}")
    return result


def main() -> int:
    """Run the rounds and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=1, help="predict threads per worker")
    parser.add_argument("--connections", type=int, default=32)
    round_options(parser)
    parser.add_argument(
        "--replica-key",
        action="store_true",
        help="the worker asks for its replica key, which every request carries (as deployed)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 below the target")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"worker": [], "bare": []}
    for _ in range(args.rounds):
        for kind in ("worker", "bare"):
            result = measure(kind, args)
            runs[kind].append(result)
            print(f"  {kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    worker = max(r["rps"] for r in runs["worker"])
    bare = max(r["rps"] for r in runs["bare"])
    ratio = worker / bare
    verdict = "" if ratio >= TARGET else " BELOW TARGET"
    print(
        f"worker_overhead: worker {worker:.0f} req/s, bare {bare:.0f} req/s, "
        f"ratio {ratio:.2f} (target >= {TARGET:.2f}){verdict}",
        flush=True,
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary = {"worker_rps": worker, "bare_rps": bare, "ratio": ratio, "runs": runs,
               "settings": vars(args)}  # fmt: skip
    (results / "worker_overhead.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and ratio < TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
