"""Settings of the Gateway service (environment prefix ``CORMORANT_GATEWAY_``)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ServiceSettings

# 10 MiB, as the worker: a Base64 image of a few MB fits, a runaway upload does not.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
# As the worker's: the event stays under NATS's default 1 MiB max_payload.
DEFAULT_LOG_MAX_BYTES = 256 * 1024


class GatewaySettings(ServiceSettings):
    """Settings of the Gateway service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_GATEWAY_", extra="ignore", populate_by_name=True
    )

    port: int = 8080
    """Port the service listens on."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Port of the Open Inference Protocol over gRPC (``inference.GRPCInferenceService``),
    beside the HTTP port; 0 turns it off."""

    deployer_url: str = "http://127.0.0.1:8081"
    """Deployer: owns endpoints and versions, and serves the routing table to the gateway."""

    predictlog_url: str = "http://127.0.0.1:8082"
    """Prediction log service: logs, CSV export, charts and metrics of each endpoint."""

    feedback_url: str = "http://127.0.0.1:8083"
    """Feedback service: feedback loops and datasets."""

    alerts_url: str = "http://127.0.0.1:8084"
    """Alerts service: metric triggers and flows."""

    batch_url: str = "http://127.0.0.1:8085"
    """Batch service: batch jobs."""

    instance_id: str | None = None
    """Name of this gateway in load reports (default: <hostname>-<pid>)."""

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, gt=0)
    """Largest predict request body accepted; larger ones get 413."""

    default_timeout_s: float = Field(default=60.0, gt=0)
    """Predict timeout of an endpoint whose route names none; past it the client gets 504."""

    connect_timeout_s: float = Field(default=2.0, gt=0)
    """Seconds to open a connection to a replica before trying another one."""

    connect_attempts: int = Field(default=3, ge=1)
    """Replicas tried for one request when connections cannot be made."""

    replica_cooldown_s: float = Field(default=2.0, ge=0)
    """Seconds a replica that refused a connection is passed over, unless it is the last one."""

    upstream_idle_s: float = Field(default=1.0, gt=0)
    """Idle replica connections close after this; keep it under the workers' keep-alive (2 s)."""

    upstream_max_idle: int = Field(default=256, ge=0)
    """Idle keep-alive connections kept per replica."""

    routing_refresh_s: float = Field(default=30.0, gt=0)
    """Full reload of the routing table from the deployer, a safety net under the events."""

    auth_refresh_s: float = Field(default=60.0, gt=0)
    """Full reload of the token and admin-key hashes from the database."""

    auth_negative_ttl_s: float = Field(default=1.0, ge=0)
    """Seconds an unknown token is remembered as unknown before the database is asked again."""

    load_report_s: float = Field(default=1.0, gt=0)
    """Interval of the load reports (in-flight requests per replica) sent to the autoscaler."""

    forward_timeout_s: float = Field(default=300.0, gt=0)
    """Longest wait for each piece of a forwarded management call's answer."""

    openapi_cache_s: float = Field(default=10.0, ge=0)
    """Seconds the merged OpenAPI document is served from cache."""

    log_predictions: bool = True
    """Publish ``PredictionLogged`` for predict requests no worker answered (413 after auth,
    502, 503, 504), so the prediction log shows them too, and for shadow versions' answers to
    mirrored requests; workers log all the others."""

    log_max_bytes: int = Field(default=DEFAULT_LOG_MAX_BYTES, gt=0)
    """Largest input (in bytes of request body) kept in such an event; a larger one is logged
    as a short note of its size."""

    shadow_queue: int = Field(default=1000, ge=1)
    """Mirrored requests waiting for a shadow replica; past that, a mirrored copy is dropped
    (and counted) rather than ever delaying a caller."""

    shadow_queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Bytes of request bodies the mirrored requests waiting may hold together; past that, a
    mirrored copy is dropped (and counted)."""

    shadow_senders: int = Field(default=8, ge=1)
    """Mirrored requests sent to shadow replicas at once."""

    console_secret: SecretStr | None = None
    """Key that signs the web console's session cookies; give every gateway behind one address
    the same one. Unset: a random key per process, so sessions end when the gateway restarts."""

    console_session_s: float = Field(default=8 * 3600.0, ge=60)
    """Lifetime of a web console session (seconds) before the admin key is asked again."""

    grafana_url: str | None = None
    """Grafana's address as browsers reach it: the console's Monitoring tab links the imported
    ``deploy/grafana`` dashboards there. Unset: it says how to import them instead."""

    def gateway_id(self) -> str:
        """``instance_id``, or ``<hostname>-<pid>`` when unset."""
        return self.instance_id or f"{socket.gethostname()}-{os.getpid()}"
