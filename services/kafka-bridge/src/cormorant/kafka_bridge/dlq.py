"""The dead-letter topic: messages predict could not handle, with the reason in their headers.

A dead-lettered message is the input message as it was (key, value, its own headers) plus
the source and identity headers of an output message and:

- ``cormorant-error-type``: the exception's class name (``ValueError``, ``EmptyValue``...);
- ``cormorant-error-message``: its message, cut at 1,000 characters;
- ``cormorant-error-stage``: ``input``, ``preprocess``, ``predict`` or ``output``;
- ``cormorant-attempts``: how many times predict was tried.

Replaying one means producing its key and value back to the input topic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from cormorant.kafka_bridge.predict import Failed
from cormorant.kafka_bridge.produce import Headers, Outgoing

log = logging.getLogger(__name__)

ERROR_TYPE: Final = "cormorant-error-type"
ERROR_MESSAGE: Final = "cormorant-error-message"
ERROR_STAGE: Final = "cormorant-error-stage"
ATTEMPTS: Final = "cormorant-attempts"


class TopicsMissing(RuntimeError):
    """Topics the replica needs do not exist on the cluster."""

    def __init__(self, topics: Iterable[str], bootstrap_servers: str) -> None:
        names = sorted(topics)
        super().__init__(
            f"topic(s) {', '.join(names)} do not exist on {bootstrap_servers}: create them first"
        )
        self.topics = names


def dead_letter(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    original: Sequence[tuple[str, bytes]],
    source: Headers,
    failure: Failed,
) -> Outgoing:
    """The dead-letter message of one input message predict failed on."""
    headers: Headers = [
        (name, data) for name, data in original if not name.startswith("cormorant-")
    ]
    headers.extend(source)
    headers.extend(
        (
            (ERROR_TYPE, failure.error_type.encode()),
            (ERROR_MESSAGE, failure.message.encode(errors="replace")),
            (ERROR_STAGE, failure.stage.encode()),
            (ATTEMPTS, str(failure.attempts).encode()),
        )
    )
    return Outgoing(topic, key, value if value is not None else b"", headers)


async def check_topics(
    admin: AIOKafkaAdminClient,
    *,
    required: Iterable[str],
    dead_letter_topic: str,
    create_dead_letter: bool,
    bootstrap_servers: str,
) -> None:
    """Refuse to start without the input and output topics; create the dead-letter one if asked.

    Listing (not describing) the topics: a broker with ``auto.create.topics.enable`` creates
    any topic a metadata request names, which would hide a typo.
    """
    existing = set(await admin.list_topics())
    missing = set(required) - existing
    if missing:
        raise TopicsMissing(missing, bootstrap_servers)
    if dead_letter_topic in existing:
        return
    if not create_dead_letter:
        raise TopicsMissing([dead_letter_topic], bootstrap_servers)
    await _create_topic(admin, dead_letter_topic)


async def _create_topic(admin: AIOKafkaAdminClient, topic: str) -> None:
    # One partition: dead letters are rare, and one partition keeps them in arrival order.
    try:
        replication = await _replication(admin)
        response: Any = await admin.create_topics([NewTopic(topic, 1, replication)])
    except TopicAlreadyExistsError:
        return  # another replica created it first
    for name, code, message in _topic_errors(response):
        if code not in (0, TopicAlreadyExistsError.errno):
            raise RuntimeError(f"creating the dead-letter topic {name!r} failed: {message}")
    log.info("created the dead-letter topic %s", topic)


async def _replication(admin: AIOKafkaAdminClient) -> int:
    # Three copies where the cluster has them, as Kafka's own default for internal topics.
    cluster: Any = await admin.describe_cluster()
    return max(1, min(3, len(cluster.get("brokers", ()))))


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    errors = getattr(response, "topic_errors", [])
    return [(str(item[0]), int(item[1]), item[2] if len(item) > 2 else None) for item in errors]
