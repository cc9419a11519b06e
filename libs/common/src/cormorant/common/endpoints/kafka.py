"""The ``kafka`` section of a stream endpoint: its shape, its defaults, how replicas get it.

Pure values and functions (no broker, no supervisor), so the spec resolution, the views and
the fleet's launches can all use them; the broker checks are in the deployer's
``streams/admin.py``, the lag autoscaling and the model swap in the fleet.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from cormorant.common.kafka_topics import check_input_topics, check_topic

# Security options whose values are never shown back (the API echoes the rest).
_SECRET_MARKS = ("password", "secret", "token", "key")
MASK = "***"


class KafkaSpec(BaseModel):
    """A stream endpoint's Kafka settings after defaults, as stored in ``spec.kafka``."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field(min_length=1, description="host:port[,host:port...]")
    input_topics: list[str] = Field(min_length=1, description="Topics consumed and predicted.")
    output_topic: str = Field(description="Topic the predictions are produced to.")
    dlq_topic: str | None = Field(default=None, description="Default: <output_topic>.dlq.")
    security: dict[str, str] = Field(
        default_factory=dict, description="SASL/SSL options passed to the Kafka clients."
    )
    partitions: dict[str, int] = Field(
        default_factory=dict, description="Partitions of each input topic at creation."
    )

    @field_validator("input_topics")
    @classmethod
    def _inputs(cls, value: list[str]) -> list[str]:
        return check_input_topics(value)

    @field_validator("output_topic", "dlq_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None:
            check_topic(value)
        return value

    @property
    def dead_letter_topic(self) -> str:
        """``dlq_topic``, or ``<output_topic>.dlq``."""
        return self.dlq_topic or f"{self.output_topic}.dlq"

    @property
    def partition_count(self) -> int:
        """Partitions of all the input topics: the most replicas that get work."""
        return sum(self.partitions.values())


def parse_kafka(given: dict[str, JsonValue], *, default_bootstrap: str) -> KafkaSpec:
    """``given`` (a request's ``kafka`` section) with defaults; ``ValueError`` says what is
    wrong, field by field."""
    fields: dict[str, Any] = {k: v for k, v in given.items() if k != "partitions"}
    if not fields.get("bootstrap_servers"):
        fields["bootstrap_servers"] = default_bootstrap
    topics = fields.get("input_topics")
    if isinstance(topics, str):
        fields["input_topics"] = [topics]
    try:
        return KafkaSpec.model_validate(fields)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in ("kafka", *err["loc"]))
            if err["type"] == "extra_forbidden":
                accepted = ", ".join(f for f in KafkaSpec.model_fields if f != "partitions")
                problems.append(f"{where}: unknown field; accepted fields are {accepted}")
            elif err["type"] == "missing":
                problems.append(f"{where}: required")
            else:
                problems.append(f"{where}: {err['msg']}")
        raise ValueError("; ".join(problems)) from exc


def stored_kafka(spec_kafka: dict[str, JsonValue] | None) -> KafkaSpec:
    """The stored ``spec.kafka`` of a stream endpoint."""
    if spec_kafka is None:
        raise ValueError("a stream endpoint without a kafka section")
    return KafkaSpec.model_validate(spec_kafka)


def consumer_group(slug: str, endpoint_id: uuid.UUID) -> str:
    """The endpoint's consumer group: one per endpoint, shared by all its versions.

    The id's prefix keeps two installations that share a Kafka cluster apart.
    """
    return f"cormorant-{slug}-{endpoint_id.hex[:8]}"


def public_kafka(spec_kafka: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
    """``spec.kafka`` as the API shows it: security values that look secret are masked."""
    if spec_kafka is None:
        return None
    shown = dict(spec_kafka)
    security = shown.get("security")
    if isinstance(security, dict):
        shown["security"] = {
            key: MASK if any(mark in key.lower() for mark in _SECRET_MARKS) else value
            for key, value in security.items()
        }
    return shown
