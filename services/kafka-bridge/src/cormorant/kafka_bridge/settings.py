"""Settings of one kafka-bridge replica (environment prefix ``CORMORANT_KAFKA_BRIDGE_``)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cormorant.common.kafka_topics import check_input_topics, check_topic
from cormorant.common.predictor import DEFAULT_MAX_FILE_BYTES, PredictorSpec
from cormorant.common.settings import ServiceSettings

# The endpoint slug tags logged predictions and NATS subjects, so it follows the slug rule.
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class KafkaBridgeSettings(ServiceSettings):
    """A stream-endpoint replica: its model, its topics and consumer group, how it batches."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_KAFKA_BRIDGE_", extra="ignore", populate_by_name=True
    )

    port: int = Field(default=0, ge=0, le=65535)
    """Port of ``/healthz`` and ``/metrics`` (0 picks a free one, logged at start-up)."""

    source: Path = Path(".")
    """Directory of the model's code and artifacts; sibling modules import from it."""

    file: str = "predict.py"
    """File holding the predict function, relative to ``source``."""

    function: str = "predict"
    """Name of the predict function; it receives each message value as ``bytes``."""

    preprocess_file: str | None = None
    """File holding the preprocess function (defaults to ``file``)."""

    preprocess_function: str | None = None
    """Name of a preprocess function run before predict; none when unset."""

    accepts_file: bool = False
    """Write each message value to a temporary file and pass its path instead of the bytes."""

    max_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, gt=0)
    """Largest message value accepted when ``accepts_file`` is set; larger ones dead-letter."""

    temp_dir: Path | None = None
    """Where ``accepts_file`` inputs are written (the system temporary directory when unset)."""

    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables exported to the predict code before it is imported."""

    endpoint: str = "local"
    """Slug of the stream endpoint served (headers, logged predictions, metrics)."""

    version: str = "local"
    """Model version served (output headers, logged predictions)."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, ``host:port[,host:port...]``."""

    input_topics: list[str] = Field(default_factory=list)
    """Topics consumed; their message values are predicted."""

    output_topic: str = ""
    """Topic the predictions are produced to, keyed like their input message."""

    dlq_topic: str | None = None
    """Dead-letter topic for messages predict failed on (``<output_topic>.dlq`` when unset)."""

    create_dlq_topic: bool = True
    """Create the dead-letter topic at start-up when it does not exist."""

    group: str = ""
    """Consumer group: one per endpoint, shared by its versions so a new one resumes offsets."""

    security: dict[str, str] = Field(default_factory=dict)
    """SASL/SSL options for the Kafka clients (``security_protocol``, ``sasl_mechanism``...)."""

    max_batch: int = Field(default=500, ge=1)
    """Most messages fetched, predicted, produced and committed as one batch."""

    predict_threads: int = Field(default=1, ge=1)
    """Threads a batch is predicted on (more only helps models that release the GIL)."""

    predict_tries: int = Field(default=3, ge=1)
    """Attempts at predicting one message before it goes to the dead-letter topic."""

    retry_backoff_ms: float = Field(default=10.0, ge=0)
    """Pause before the second attempt at a failed message, doubled for each later one."""

    fetch_max_wait_ms: int = Field(default=10, ge=0)
    """Longest a fetch waits for data; low because tansu answers only when it expires."""

    session_timeout_ms: int = Field(default=10_000, gt=0)
    """Time without heartbeats after which the broker evicts a crashed replica."""

    heartbeat_interval_ms: int = Field(default=3_000, gt=0)
    """Interval of the background heartbeats (a third of the session timeout or less)."""

    rebalance_timeout_ms: int = Field(default=60_000, gt=0)
    """Time a replica has to finish its in-flight batch and rejoin during a rebalance."""

    max_poll_interval_ms: int = Field(default=300_000, gt=0)
    """Time without polling after which aiokafka leaves the group; a slow batch keeps polling."""

    acks: str = "all"
    """Producer acknowledgements: ``all`` (durable), ``1`` or ``0``."""

    linger_ms: int = Field(default=0, ge=0)
    """Time the producer waits to fill a batch (a batch is sent at once anyway)."""

    max_produce_batch_bytes: int = Field(default=1_048_576, gt=0)
    """Size of one produce batch per partition."""

    compression_type: str | None = None
    """Compression of produced batches: ``gzip``, ``snappy``, ``lz4``, ``zstd`` or none."""

    request_timeout_ms: int = Field(default=30_000, gt=0)
    """Time the Kafka clients wait for one broker answer."""

    stop_timeout: float = Field(default=30.0, gt=0)
    """Seconds after SIGTERM to finish the in-flight batch; then exit without committing it."""

    publish_predictions: bool = True
    """Publish every prediction as ``PredictionLogged`` on NATS when the server is reachable."""

    nats_connect_timeout: float = Field(default=2.0, gt=0)
    """Seconds to wait for NATS at start-up before streaming without prediction logging."""

    @field_validator("endpoint")
    @classmethod
    def _slug(cls, value: str) -> str:
        if _SLUG.fullmatch(value) is None:
            raise ValueError("must be lowercase letters, digits and '-' (not first), 1-63 long")
        return value

    @field_validator("input_topics")
    @classmethod
    def _input_topics(cls, value: list[str]) -> list[str]:
        return check_input_topics(value)

    @field_validator("output_topic", "dlq_topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value:
            check_topic(value)
        return value

    @field_validator("acks")
    @classmethod
    def _acks(cls, value: str) -> str:
        if value not in ("all", "1", "0", "-1"):
            raise ValueError("must be all, 1 or 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KafkaBridgeSettings:
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.output_topic and self.output_topic in self.input_topics:
            raise ValueError(f"output topic {self.output_topic!r} is also an input topic")
        if self.dead_letter_topic and self.dead_letter_topic in self.input_topics:
            raise ValueError(f"dead-letter topic {self.dead_letter_topic!r} is an input topic")
        return self

    @property
    def dead_letter_topic(self) -> str:
        """The dead-letter topic: ``dlq_topic``, or ``<output_topic>.dlq``."""
        return self.dlq_topic or (f"{self.output_topic}.dlq" if self.output_topic else "")

    def missing(self) -> list[str]:
        """Names of the required options that are not set."""
        needed = {
            "--input-topic": bool(self.input_topics),
            "--output-topic": bool(self.output_topic),
            "--group": bool(self.group),
        }
        return [flag for flag, given in needed.items() if not given]

    def predictor_spec(self) -> PredictorSpec:
        """The predict contract this replica loads."""
        return PredictorSpec(
            source=self.source,
            file=self.file,
            function=self.function,
            preprocess_file=self.preprocess_file,
            preprocess_function=self.preprocess_function,
            accepts_file=self.accepts_file,
            max_file_bytes=self.max_file_bytes,
        )
