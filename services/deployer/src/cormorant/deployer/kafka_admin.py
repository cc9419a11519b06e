"""What the deployer asks a Kafka cluster at a stream endpoint's creation: do the topics
exist, how many partitions they have (``replicas.max`` may not exceed them).

Topics are listed before anything names them: a broker with ``auto.create.topics.enable``
(tansu does) creates any topic a metadata request names, which would hide a typo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from cormorant.common.errors import BadRequest
from cormorant.deployer.schemas import EndpointCreate, EndpointSpec, ReplicasSpec
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.stream_spec import parse_kafka
from cormorant.deployer.validation import InvalidField

log = logging.getLogger(__name__)

_PASSED: Final = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
    }
)
_SSL_FILES: Final = {
    "ssl_cafile": "cafile",
    "ssl_capath": "capath",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_password": "password",
}
# The Kafka/librdkafka spellings a properties file uses, as the kafka-bridge accepts them.
_ALIASES: Final = {
    "sasl_username": "sasl_plain_username",
    "sasl_password": "sasl_plain_password",
    "sasl_mechanisms": "sasl_mechanism",
    "ssl_ca_location": "ssl_cafile",
    "ssl_certificate_location": "ssl_certfile",
    "ssl_key_location": "ssl_keyfile",
    "ssl_key_password": "ssl_password",
}


class KafkaUnreachable(BadRequest):
    """The bootstrap servers did not answer: the topics cannot be checked."""

    code = "kafka_unreachable"


def client_security(options: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka keyword arguments for a stream endpoint's ``security`` options."""
    kwargs: dict[str, Any] = {}
    ssl_files: dict[str, str] = {}
    for raw_key, value in options.items():
        key = raw_key.strip().lower().replace(".", "_").replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in _PASSED:
            kwargs[key] = value.upper() if key in ("security_protocol", "sasl_mechanism") else value
        elif key in _SSL_FILES:
            ssl_files[_SSL_FILES[key]] = value
        else:
            known = ", ".join(sorted(_PASSED | set(_SSL_FILES) | set(_ALIASES)))
            raise BadRequest(
                f"kafka.security: unknown option {raw_key!r}; known: {known}",
                details={"field": "kafka.security"},
            )
    if ssl_files or str(kwargs.get("security_protocol", "")).endswith("SSL"):
        try:
            kwargs["ssl_context"] = create_ssl_context(**ssl_files)
        except (OSError, ValueError) as exc:
            raise BadRequest(
                f"kafka.security: the SSL options cannot be used: {exc}",
                details={"field": "kafka.security"},
            ) from exc
    return kwargs


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
