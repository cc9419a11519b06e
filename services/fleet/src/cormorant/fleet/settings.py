"""Settings of the Fleet service (environment prefix ``CORMORANT_FLEET_``).

They were the deployer's until the replicas got a service of their own: each is still read
under its former ``CORMORANT_DEPLOYER_`` name when the new one is not set.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cormorant.common.sandbox import DEFAULT_UID_BASE, DEFAULT_UID_COUNT
from cormorant.common.settings import ArchivesSettings

# What models commonly import, by cost: the scikit-learn estimators alone take seconds.
DEFAULT_PRELOAD_MODULES = (
    "numpy",
    "scipy",
    "pandas",
    "joblib",
    "sklearn",
    "sklearn.linear_model",
    "sklearn.ensemble",
    "sklearn.pipeline",
    "sklearn.preprocessing",
)
# The deployer's own listener: never read as the fleet's.
_NOT_FORMER = frozenset({"host", "port"})


class _FormerNames(EnvSettingsSource):
    """The ``CORMORANT_DEPLOYER_`` names the fleet's settings had, read below the new ones."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if field_name in _NOT_FORMER:
            return None, field_name, False
        return super().get_field_value(field, field_name)


class FleetSettings(ArchivesSettings):
    """Settings of the Fleet service; shared values keep their ``CORMORANT_`` names."""

    model_config = SettingsConfigDict(
        env_prefix="CORMORANT_FLEET_", extra="ignore", populate_by_name=True
    )

    port: int = 8086
    """Port the service listens on."""

    kind: Literal["local", "kubernetes"] = Field(
        default="local",
        validation_alias=AliasChoices("kind", "CORMORANT_FLEET_KIND", "CORMORANT_DEPLOYER_FLEET"),
    )
    """Who runs the replicas: ``local`` worker processes on this machine, or ``kubernetes``
    (a Deployment, Service, PodDisruptionBudget and HPA or KEDA ``ScaledObject`` per endpoint
    version, in ``k8s_namespace``). Formerly ``CORMORANT_DEPLOYER_FLEET``, still read."""

    k8s_namespace: str = "cormorant"
    """Namespace of the endpoints' Kubernetes objects (the fleet's RBAC is limited to it)."""

    k8s_kubeconfig: Path | None = None
    """Kubeconfig file the kubernetes fleet connects with; unset: the pod's service account
    (in-cluster credentials)."""

    k8s_image: str = "cormorant:latest"
    """Image of every replica pod (and of its init container fetching the version's code)."""

    k8s_replica_port: int = Field(default=8080, ge=1, le=65535)
    """Port a replica pod serves ``/predict``, ``/healthz`` and ``/metrics`` on."""

    k8s_run_as_user: int = Field(default=10001, ge=1)
    """Non-root uid (and gid) replica pods run as."""

    k8s_cpu_request: str = "250m"
    """CPU each replica pod requests (the HPA's CPU utilisation is relative to it)."""

    k8s_cpu_target_percent: int = Field(default=70, ge=1, le=100)
    """CPU utilisation a web endpoint's HPA aims for, beside the in-flight requests target."""

    k8s_archives_secret: str | None = None
    """Secret whose variables (e.g. ``AWS_ACCESS_KEY_ID``) the init container fetching a
    version's archive gets, for an ``s3://`` archives store; never given to the worker."""

    worker_command: list[str] | None = None
    """Command that starts a worker replica, as a JSON list, the replica's flags appended
    (unset: this Python interpreter with ``-m cormorant.worker``)."""

    preload_modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PRELOAD_MODULES)
    )
    """Modules the warm worker template imports before forking replicas from it, comma-separated
    (those not installed are skipped); empty: no template, every replica starts as a fresh
    process. With ``worker_command`` set there is no template either."""

    replica_host: str = "127.0.0.1"
    """Interface local replicas listen on; the gateway reaches them there."""

    drain_grace_s: float = Field(default=1.0, ge=0)
    """Seconds between announcing a replica as draining and stopping it, so gateways stop
    routing to it first."""

    stop_timeout_s: float = Field(default=35.0, gt=0)
    """Seconds a stopping replica gets to finish in-flight requests after SIGTERM before it is
    killed; raised to the replica's own ``graceful_timeout`` plus 5 s when that is longer."""

    start_timeout_s: float = Field(default=300.0, gt=0)
    """Seconds a new replica may take to answer ``/healthz`` with 200 before it counts as
    failed (model imports can be slow)."""

    probe_interval_s: float = Field(default=0.1, gt=0)
    """Interval of the ``/healthz`` probes while a replica starts."""

    monitor_interval_s: float = Field(default=0.5, gt=0)
    """Interval at which running replicas are checked for an exit."""

    restart_backoff_s: float = Field(default=1.0, gt=0)
    """Delay before the first restart of a crashed replica; doubled on each further crash."""

    max_restart_backoff_s: float = Field(default=30.0, gt=0)
    """Longest delay between two restarts of a crashing replica."""

    max_start_failures: int = Field(default=3, ge=1)
    """Crashes in a row, before any replica became ready, that mark the endpoint ``failed``."""

    scale_down_delay_s: float = Field(default=30.0, ge=0)
    """Seconds the autoscaler's recommendation must stay lower before replicas are removed."""

    autoscale_window_s: float = Field(default=4.0, gt=0)
    """Load reports of the last this-many seconds are averaged into the observed concurrency."""

    autoscale_interval_s: float = Field(default=1.0, gt=0)
    """Interval of the autoscaler's decisions."""

    reconcile_interval_s: float = Field(default=10.0, gt=0)
    """Interval of the safety-net pass that converges every endpoint to its desired replicas."""

    check_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds ``python -m cormorant.worker --check`` may take to judge a configuration."""

    startup_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to wait for PostgreSQL and NATS at start-up before giving up."""

    event_history: int = Field(default=20, ge=1)
    """Replica events kept per endpoint and shown in its ``events``."""

    bridge_command: list[str] | None = None
    """Command that starts a stream-endpoint replica, as a JSON list, its flags appended
    (unset: this Python interpreter with ``-m cormorant.kafka_bridge``)."""

    stream_lag_target: float = Field(
        default=1000.0,
        gt=0,
        validation_alias=AliasChoices(
            "stream_lag_target",
            "CORMORANT_FLEET_STREAM_LAG_TARGET",
            "CORMORANT_DEPLOYER_STREAM_LAG_TARGET",
        ),
    )
    """Messages of consumer lag per replica a stream endpoint's autoscaler aims for when the
    endpoint names no ``replicas.target`` (KEDA's ``lagThreshold``); the deployer's setting of
    the same name sets it too."""

    sandbox: bool = True
    """Contain every replica: a uid of its own (when this service runs as root), a private
    directory with only its own code, an environment without platform settings, its
    endpoint's ``resources`` limits and ``no_new_privs``. Off: replicas run as this service,
    in its environment (for development only)."""

    replica_nats_url: SecretStr | None = None
    """The NATS URL replicas connect with, as a user that may only publish predictions and
    metrics (``cormorant up`` sets it); unset: the services' own ``nats_url``."""

    sandbox_dir: Path | None = None
    """Where replicas' private directories are made. Unset: under ``sandbox_root`` when this
    service runs as root, else beside the data directory (named like it with ``-replicas``
    added). It must lie outside the data directory, which replicas cannot enter; its parents
    are opened for traversal."""

    sandbox_root: Path = Path("/var/lib/cormorant/replicas")
    """Where a stack run as root keeps its replicas' private directories by default: a
    root-owned 0711 directory outside any home (so no home directory has to let other users
    traverse it), one subdirectory per stack: the path it would have beside the data
    directory, mirrored under this one (``<root>/home/me/app/.cormorant-replicas``)."""

    sandbox_uid_base: int = Field(default=DEFAULT_UID_BASE, ge=1000)
    """First of the uids given to replicas, one each (they need no passwd entry)."""

    sandbox_uid_count: int = Field(default=DEFAULT_UID_COUNT, ge=1)
    """How many uids replicas may use, hence how many replicas run at once on this machine."""

    crash_loop_deaths: int = Field(default=5, ge=1)
    """Worker or replica deaths within ``crash_loop_window_s`` that mark an endpoint
    ``degraded`` (with the last error) while it still serves."""

    crash_loop_window_s: float = Field(default=60.0, gt=0)
    """The window of ``crash_loop_deaths``."""

    stop_replicas_on_shutdown: bool = False
    """Stop every replica when the service shuts down, and have the kernel end them if it dies
    without a shutdown (Linux); by default they keep serving and the next start adopts them."""

    batch_idle_timeout_s: float = Field(default=60.0, ge=0)
    """Seconds a batch endpoint found scaled up at start keeps its replicas before scaling to 0
    (unless the batch service renews its demand)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment under the new names first, then under the deployer's former ones."""
        former = _FormerNames(settings_cls, env_prefix="CORMORANT_DEPLOYER_")
        return init_settings, env_settings, former, dotenv_settings, file_secret_settings

    @field_validator("preload_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    def resolved_sandbox_dir(self) -> Path:
        """Where replicas' private directories go."""
        if self.sandbox_dir is not None:
            return self.sandbox_dir
        data_dir = self.data_dir.resolve()
        beside = data_dir.parent / f"{data_dir.name}-replicas"
        if os.geteuid() == 0:
            # One per stack (several share a machine: a developer's, the tests'), at the path
            # it would have beside the data directory, mirrored under the root.
            return self.sandbox_root / beside.relative_to(beside.anchor)
        return beside

    def template_command(self) -> list[str] | None:
        """The worker template's command, or None when replicas start as fresh processes."""
        if self.worker_command is not None or not self.preload_modules:
            return None
        return [sys.executable, "-m", "cormorant.worker.template"]

    def resolved_worker_command(self) -> list[str]:
        """``worker_command``, or this interpreter running ``cormorant.worker``."""
        return list(self.worker_command or [sys.executable, "-m", "cormorant.worker"])

    def resolved_bridge_command(self) -> list[str]:
        """``bridge_command``, or this interpreter running ``cormorant.kafka_bridge``."""
        return list(self.bridge_command or [sys.executable, "-m", "cormorant.kafka_bridge"])
