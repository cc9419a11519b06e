"""The NATS users every Cormorant NATS server knows, and what the replica user may do.

Declared here, not beside the dev server, because the replicas' publisher (``bus.replica``) and
the Kubernetes manifests' ``nats.conf`` must agree with whatever server runs them.
"""

from __future__ import annotations

PLATFORM_USER = "cormorant"
"""Every platform service: any subject."""
REPLICA_USER = "replica"
"""Workers and kafka-bridges, which run user code."""
REPLICA_INBOX = "_REPLICA_INBOX"
"""The inbox prefix of replicas' connections (``bus.replica_publisher``): the only replies
the replica user may receive."""
REPLICA_PUBLISH = (
    "cormorant.predictions.>",
    "cormorant.metrics.>",
    "$JS.API.STREAM.INFO.CORMORANT_PREDICTIONS",
    "$JS.API.STREAM.INFO.CORMORANT_METRICS",
)
"""What the replica user may publish: the prediction log's subjects, and the look-up of the
two streams (a replica checks they exist; it may not create or change them)."""
