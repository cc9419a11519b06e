"""The anchor of ``worker_overhead``: a bare Starlette app calling the same predict function.

It runs under the very same gunicorn + uvicorn-worker configuration as the worker (same
``resolve_server_config`` and ``GunicornServer``), and calls predict in a thread pool of the
same size, as any careful hand-written server would; only the worker's own code is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cormorant.worker.server import GunicornServer, resolve_server_config


def load(path: Path, name: str) -> Callable[..., Any]:
    """The function ``name`` of the file at ``path``."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: Callable[..., Any] = getattr(module, name)
    return function


def create_bare_app(predict: Callable[..., Any], threads: int) -> Starlette:
    """POST /predict → predict(input_params) in a thread pool; GET /healthz."""
    pool = ThreadPoolExecutor(max_workers=threads)

    async def handle(request: Request) -> Response:
        document = await request.json()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(pool, predict, document["input_params"])
        return JSONResponse({"prediction": result})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        pool.shutdown(wait=False)

    routes = [Route("/predict", handle, methods=["POST"]), Route("/healthz", healthz)]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> int:
    """Serve the bare app with the given gunicorn settings."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--function", default="predict")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    pairs = dict(item.split("=", 1) for item in args.server)
    config = resolve_server_config(pairs, host="127.0.0.1", port=args.port)
    path = (args.source / args.file).resolve()
    options = {"loglevel": "warning", **config.options}

    def factory() -> Starlette:
        return create_bare_app(load(path, args.function), config.threads)

    GunicornServer(factory, options).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
