"""Real servers from PyPI wheels, run as child processes: NATS, PostgreSQL, a Kafka broker.

Used by ``cormorant up`` for the local stack and by the test fixtures.
"""

from cormorant.devstack.servers.kafka import KafkaBroker
from cormorant.devstack.servers.nats import NatsServer
from cormorant.devstack.servers.postgres import PostgresServer
from cormorant.devstack.servers.process import ManagedProcess, ServerStartError

__all__ = [
    "KafkaBroker",
    "ManagedProcess",
    "NatsServer",
    "PostgresServer",
    "ServerStartError",
]
