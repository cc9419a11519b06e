"""What the deployer asks a Kafka cluster at a stream endpoint's creation: do the topics
exist, how many partitions they have (``replicas.max`` may not exceed them).

Topics are listed before anything names them: a broker with ``auto.create.topics.enable``
(tansu does) creates any topic a metadata request names, which would hide a typo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from cormorant.common.endpoints.kafka import parse_kafka
from cormorant.common.endpoints.schemas import EndpointCreate, EndpointSpec, ReplicasSpec
from cormorant.common.errors import BadRequest
from cormorant.common.kafka_security import InvalidSecurityOption
from cormorant.common.kafka_security import client_security as kafka_client_security
from cormorant.deployer.endpoints.validation import InvalidField
from cormorant.deployer.settings import DeployerSettings

log = logging.getLogger(__name__)


class KafkaUnreachable(BadRequest):
    """The bootstrap servers did not answer: the topics cannot be checked."""

    code = "kafka_unreachable"


def client_security(options: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka keyword arguments for a stream endpoint's ``security`` options."""
    try:
        return kafka_client_security(options)
    except InvalidSecurityOption as exc:
        raise InvalidField("kafka.security", exc.message) from exc


async def partition_counts(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    security: Mapping[str, str],
    timeout_ms: int = 10_000,
) -> tuple[dict[str, int], set[str]]:
    """The partitions of each of ``topics`` that exists, and the names of those that do not."""
    wanted = list(dict.fromkeys(topics))
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="cormorant-deployer",
        request_timeout_ms=timeout_ms,
        **client_security(security),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        present = [topic for topic in wanted if topic in existing]
        counts: dict[str, int] = {}
        if present:
            described: Any = await admin.describe_topics(present)
            for topic in described:
                counts[str(topic["topic"])] = len(topic.get("partitions") or ())
    except (KafkaError, OSError, TimeoutError) as exc:
        raise KafkaUnreachable(
            f"kafka.bootstrap_servers: cannot reach {bootstrap_servers} to check the topics "
            f"({type(exc).__name__}: {exc}); check the address and the security options",
            details={"field": "kafka.bootstrap_servers"},
        ) from exc
    finally:
        try:
            await admin.close()
        except Exception as exc:  # a client that never connected has nothing to close
            log.debug("closing the Kafka admin client: %s", exc)
    return counts, {topic for topic in wanted if topic not in existing}


async def prepare_stream_spec(
    spec: EndpointSpec, request: EndpointCreate, settings: DeployerSettings
) -> EndpointSpec:
    """``spec`` with its Kafka section resolved and checked against the broker: the topics
    exist and ``replicas.max`` is within the input topics' partitions."""
    try:
        kafka = parse_kafka(spec.kafka or {}, default_bootstrap=settings.kafka_bootstrap)
    except ValueError as exc:
        raise BadRequest(str(exc), details={"field": "kafka"}) from exc
    if kafka.output_topic in kafka.input_topics:
        raise InvalidField(
            "kafka.output_topic", f"{kafka.output_topic!r} is also an input topic; use another"
        )
    if kafka.dead_letter_topic in kafka.input_topics:
        raise InvalidField("kafka.dlq_topic", f"{kafka.dead_letter_topic!r} is an input topic")
    counts, missing = await partition_counts(
        kafka.bootstrap_servers,
        [*kafka.input_topics, kafka.output_topic],
        security=kafka.security,
    )
    if missing:
        names = ", ".join(sorted(missing))
        raise InvalidField(
            "kafka",
            f"topic(s) {names} do not exist on {kafka.bootstrap_servers}; create them first "
            f"(only the dead-letter topic {kafka.dead_letter_topic!r} is created when missing)",
        )
    partitions = {topic: counts[topic] for topic in kafka.input_topics}
    total = sum(partitions.values())
    bounds = spec.replicas
    shown = ", ".join(f"{topic}: {count}" for topic, count in partitions.items())
    if bounds.max > total:
        raise InvalidField(
            "replicas.max",
            f"max ({bounds.max}) is above the {total} partition(s) of the input topics "
            f"({shown}); a replica beyond that gets no partition and idles: set max ≤ {total}",
        )
    target = request.replicas.target or settings.stream_lag_target
    kafka = kafka.model_copy(update={"partitions": partitions})
    return spec.model_copy(
        update={
            "kafka": kafka.model_dump(mode="json"),
            "replicas": ReplicasSpec(min=bounds.min, max=bounds.max, target=target),
        }
    )
