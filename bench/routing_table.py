"""Routing table size: the deployer's routing document and the gateway's table built from it.

docs/scaling.md sizes the gateway for thousands of endpoints from two figures measured here:

1. The document every gateway fetches from ``GET /internal/routing``: the deployer's
   ``RoutingTable`` model, serialized as the API serializes it, for ``--endpoints`` web
   endpoints with 0, 1 and ``--replicas`` ready replicas each (UUID ids, a pod address as on
   Kubernetes). Bytes per endpoint and per replica come from the differences.
2. What the gateway holds once it applied that document (``RoutingSnapshot`` parsed,
   ``RoutingTable.apply_snapshot`` with the gateway's own connection ``Pool`` per replica, no
   connection opened): the memory traced while it is built and kept, after the parsed document
   is dropped.

The anchor: the gateway pod's memory request in ``deploy/k8s/base/gateway.yaml`` (512 MiB);
the figure is the share of it the table takes. Nothing here is timed. Prints e.g.::

    routing_table: 5,000 endpoints x 3 replicas: document 2.59 MB (191 B per endpoint + 108 B
    per replica); gateway table 15.3 MB (5.9x the document), 0.029 of the gateway's 512 MiB
    request (target <= 0.10)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tracemalloc
import uuid

from cormorant.deployer.endpoints.schemas import Route, RouteReplica, RoutingTable
from cormorant.gateway.routing import RoutingSnapshot
from cormorant.gateway.routing import RoutingTable as GatewayTable
from cormorant.gateway.upstream import Pool

GATEWAY_MEMORY_REQUEST = 512 * 2**20
"""deploy/k8s/base/gateway.yaml: the gateway container's memory request."""
TARGET = 0.10


def pod_url(n: int) -> str:
    """The ``n``-th replica's address, a pod IP as the KubernetesFleet routes to."""
    return f"http://10.244.{n // 250 % 250}.{n % 250 + 1}:8080"


def document(endpoints: int, replicas: int) -> bytes:
    """The routing document of ``endpoints`` web endpoints with ``replicas`` ready ones each."""
    routes = []
    for i in range(endpoints):
        ready = [
            RouteReplica(
                id=str(uuid.uuid4()), version="3", url=pod_url(i * replicas + r), state="ready"
            )
            for r in range(replicas)
        ]
        routes.append(
            Route(
                slug=f"endpoint-{i:05d}",
                endpoint_id=str(uuid.uuid4()),
                kind="web",
                status="running",
                timeout_s=60.0,
                generation=7,
                weights={"3": 100},
                replicas=ready,
            )
        )
    return RoutingTable(endpoints=routes).model_dump_json().encode()


async def gateway_bytes(raw: bytes) -> int:
    """Memory the gateway's table holds after applying ``raw`` (the parsed document freed)."""

    def pool(host: str, port: int, tls: bool) -> Pool:
        return Pool(host, port, tls=tls)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = GatewayTable(pool)
    snapshot = RoutingSnapshot.model_validate_json(raw)
    table.apply_snapshot(snapshot, fetched_at=0.0)
    del snapshot
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table.routes) == len(json.loads(raw)["endpoints"])
    return held


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=5_000)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    bare = len(document(args.endpoints, 0))
    one = len(document(args.endpoints, 1))
    full_document = document(args.endpoints, args.replicas)
    per_endpoint = bare / args.endpoints
    per_replica = (one - bare) / args.endpoints
    held = asyncio.run(gateway_bytes(full_document))
    share = held / GATEWAY_MEMORY_REQUEST
    print(
        f"routing_table: {args.endpoints:,} endpoints x {args.replicas} replicas: document"
        f" {len(full_document) / 1e6:.2f} MB ({per_endpoint:.0f} B per endpoint +"
        f" {per_replica:.0f} B per replica); gateway table {held / 1e6:.1f} MB"
        f" ({held / len(full_document):.1f}x the document), {share:.3f} of the gateway's"
        f" 512 MiB request (target <= {TARGET:.2f})"
    )


if __name__ == "__main__":
    main()
