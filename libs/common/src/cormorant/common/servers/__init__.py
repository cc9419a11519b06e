"""Real servers from PyPI wheels, run as child processes: NATS, PostgreSQL, a Kafka broker.

Used by ``cormorant up`` for the local stack and by the test fixtures.
"""

from cormorant.common.servers.kafka import KafkaBroker
from cormorant.common.servers.nats import NatsServer
from cormorant.common.servers.postgres import PostgresServer
from cormorant.common.servers.process import ManagedProcess, ServerStartError, free_port

__all__ = [
    "KafkaBroker",
    "ManagedProcess",
    "NatsServer",
    "PostgresServer",
    "ServerStartError",
    "free_port",
]
