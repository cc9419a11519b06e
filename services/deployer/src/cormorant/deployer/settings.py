"""Settings of the Deployer service (environment prefix ``CORMORANT_DEPLOYER_``).

The replicas' settings (processes, sandbox, autoscaling, the Kubernetes fleet) are the fleet
service's (``CORMORANT_FLEET_``, ``cormorant.fleet.settings``) since it runs them.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from cormorant.common.settings import ArchivesSettings


class DeployerSettings(ArchivesSettings):
    """Settings of the Deployer service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_DEPLOYER_", extra="ignore", populate_by_name=True
    )

    port: int = 8081
    """Port the service listens on."""

    default_target: float = Field(default=4.0, gt=0)
    """In-flight requests per replica the autoscaler aims for when an endpoint names none."""

    default_timeout_s: float = Field(default=60.0, gt=0)
    """Per-request timeout (enforced by the gateway) of an endpoint that names none."""

    git_timeout_s: float = Field(default=300.0, gt=0)
    """Seconds a ``git clone`` plus checkout of an endpoint's source may take."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers of a stream endpoint whose ``kafka`` section names none."""

    stream_lag_target: float = Field(default=1000.0, gt=0)
    """Messages of consumer lag per replica a stream endpoint's autoscaler aims for when the
    endpoint names no ``replicas.target`` (KEDA's ``lagThreshold``)."""

    rollout_ready_timeout_s: float = Field(default=240.0, gt=0)
    """Seconds a rollout waits for the new version's replicas to become ready before it fails
    and the version gets no traffic (under the gateway's 300 s forward timeout)."""

    handshake_timeout_s: float = Field(default=15.0, gt=0)
    """Seconds to wait for every gateway to apply a traffic generation (and drain the requests
    in flight to a version that lost its traffic) before that version's replicas are stopped
    anyway."""

    predictlog_url: str = "http://127.0.0.1:8082"
    """Prediction log service, whose logs and charts feed the checks of rollout policies."""

    fleet_url: str = "http://127.0.0.1:8086"
    """Fleet service: runs the replicas of every endpoint version the deployer places."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL, NATS and the fleet at start-up before giving up."""
